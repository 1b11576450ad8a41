"""`pal features build` (frozen-encoder tokens of a manifest's clips into a cache, whole or one part of n) and
`pal features merge` (parts joined into one cache)."""

import argparse
import re


def _part(text: str) -> tuple[int, int]:
    """`--shard i/n` → (i, n); the range is checked by pal.encoders.feature_cache.manifest_part."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected i/n, e.g. 0/4 for the first of 4 parts.")
    return int(match[1]), int(match[2])


def register(commands) -> None:
    features = commands.add_parser("features", help="precompute frozen-encoder tokens for a manifest")
    which = features.add_subparsers(dest="features", required=True)
    build = which.add_parser("build", help="encode a manifest's clips into a feature cache (resumes)")
    build.add_argument("--manifest", required=True, help='JSONL with an "audio" path per line')
    build.add_argument("--config", required=True,
                       help="encoder ensemble YAML: a file, or pal:encoders/NAME.yaml (`pal configs list`)")
    build.add_argument("--out", required=True, help="cache folder, resumes if it exists")
    build.add_argument("--batch-size", type=int, default=8)
    build.add_argument("--shard", type=_part, metavar="i/n",
                       help="build only part i of n (clip k goes to part k mod n) into OUT/part-i-of-n; run each part "
                            "anywhere, then `pal features merge`")
    build.set_defaults(run=run_build)
    merge = which.add_parser("merge", help="join part folders (--shard i/n) into one cache, as one run would have "
                                           "built it; rerun-safe")
    merge.add_argument("--out", required=True, metavar="DIR", help="the merged cache folder (may exist: adds to it)")
    merge.add_argument("parts", nargs="+", metavar="PART_DIR", help="folders written by `pal features build --shard`")
    merge.set_defaults(run=run_merge)


def run_build(args) -> int:
    from pal.common.manifest_lines import audio_paths
    from pal.encoders.ensemble import EnsembleConfig
    from pal.encoders.feature_cache import FeatureCache, cache_summary, manifest_part, part_folder

    audio, out = audio_paths(args.manifest), args.out
    if args.shard:
        audio, out = manifest_part(audio, *args.shard), part_folder(args.out, *args.shard)
    stats = FeatureCache(out, EnsembleConfig.from_yaml(args.config)).build(audio, batch_size=args.batch_size)
    print(cache_summary(out, stats, "new"))
    if args.shard:
        print(f"part {args.shard[0]}/{args.shard[1]} done; once every part is, join them: "
              f"pal features merge --out {args.out} {args.out}/part-*-of-{args.shard[1]}")
    return 0


def run_merge(args) -> int:
    from pal.encoders.feature_cache import cache_summary, merge_caches

    print(cache_summary(args.out, merge_caches(args.out, args.parts), "merged in"))
    return 0
