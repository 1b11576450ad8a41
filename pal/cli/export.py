"""`pal export`: a trained model as one self-contained folder (weights, tokenizer, encoders, model card)."""


def register(commands) -> None:
    export = commands.add_parser("export", help="a trained model as one folder to take away (weights, tokenizer, "
                                                "encoders, model card)")
    export.add_argument("source", help="a training run's folder (its last stage's final/ model), a `pal demo` run "
                                       "folder, or a model folder")
    export.add_argument("out", help="the new folder to write")
    export.add_argument("--merge-lora", action="store_true",
                        help="fold the LoRA adapters into the LLM's weights (plain weights, no PEFT at load time)")
    export.add_argument("--adapter-only", action="store_true",
                        help="the connectors and LoRA adapters without the LLM's weights (which must be untrained), "
                             "for the base LLM of --base-llm")
    export.add_argument("--base-llm", help="the LLM an adapter-only export goes on: a local folder, or default (the "
                                           "embedded SmolLM2); default: the training run's model.llm")
    export.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="the model's weights (default fp32)")
    export.add_argument("--eval-results", help="a `pal eval score` results.json for the model card (default: the "
                                               "run's eval/results.json when it scored this model)")
    export.set_defaults(run=run)


def run(args) -> int:
    from pal.inference.export import export_model

    out = export_model(args.source, args.out, merge=args.merge_lora, dtype=args.dtype,
                       eval_results=args.eval_results, adapter_only=args.adapter_only, base_llm=args.base_llm)
    print(f"exported to {out}: load it with `pal infer --model {out} ...` or AudioLLM.from_pretrained({str(out)!r})")
    return 0
