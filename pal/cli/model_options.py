"""The options of the commands that load a trained model (`pal infer`, `pal eval`): which model, how to decode."""


def add_model_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a trained model folder (a stage's final/)")
    parser.add_argument("--encoders", help="ensemble YAML, for a folder without encoders.json")
    parser.add_argument("--device-map", help='e.g. "auto": spread a large LLM over the GPUs (accelerate)')
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)


def decoding(args):
    from pal.inference.audio_llm import Decoding

    return Decoding(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                    top_p=args.top_p, num_beams=args.num_beams, seed=args.seed)


def load_model(args, folder: str | None = None):
    from pal.inference.audio_llm import AudioLLM

    return AudioLLM.from_pretrained(folder or args.model, encoders=args.encoders, device_map=args.device_map)
