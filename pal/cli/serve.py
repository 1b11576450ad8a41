"""`pal serve`: a trained model behind an OpenAI-compatible chat API (docs/serving.md)."""

import os


def register(commands) -> None:
    server = commands.add_parser("serve", help="a trained model behind an OpenAI-compatible chat API")
    server.add_argument("--model", required=True, help="a trained model folder (a stage's final/)")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (another than loopback needs "
                        "--api-key; default 127.0.0.1)")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--api-key", help="clients must send `Authorization: Bearer KEY` (default: the "
                        "PAL_API_KEY environment variable, else none)")
    server.add_argument("--name", help="the model id clients ask for (default: the run's stage folder name)")
    server.add_argument("--max-audio-seconds", type=float, default=600.0,
                        help="longest clip accepted (default 600: ten minutes)")
    server.add_argument("--cache-clips", type=int, default=64,
                        help="clips kept with their encoder outputs and audio keys/values (default 64)")
    server.add_argument("--max-request-mb", type=float, default=25.0, help="largest request body (default 25)")
    server.add_argument("--max-batch", type=int, default=8, help="requests answered together at most (default 8)")
    server.add_argument("--batch-wait-ms", type=float, default=10.0,
                        help="how long a request waits for others to batch with (default 10)")
    server.add_argument("--max-stop-chars", type=int, default=64,
                        help="longest stop string a request may send (default 64; docs/serving.md)")
    server.add_argument("--max-prompt-chars", type=int, default=32000,
                        help="most text, all messages together, a request may send (default 32000)")
    server.add_argument("--max-clips", type=int, default=8,
                        help="input_audio parts (clips) one conversation may hold (default 8)")
    server.set_defaults(run=run)


def run(args) -> int:
    from pal.serving.app import serve
    from pal.serving.requests import RequestLimits

    serve(args.model, host=args.host, port=args.port, api_key=args.api_key or os.environ.get("PAL_API_KEY"),
          model_id=args.name, max_audio_seconds=args.max_audio_seconds, cache_clips=args.cache_clips,
          max_request_mb=args.max_request_mb, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
          limits=RequestLimits(max_stop_chars=args.max_stop_chars, max_prompt_chars=args.max_prompt_chars,
                               max_clips=args.max_clips))
    return 0
