"""`llamakit new-recipe`: write a commented recipe for a checkpoint and a prompt file (the work is in recipe_writer)."""

from __future__ import annotations

from typing import Optional

import typer

from llamakit.cli.app import app, console


@app.command("new-recipe")
def new_recipe_cmd(
    ckpt_dir: str = typer.Argument(..., help="Checkpoint folder (e.g. /data/LLaMA/13B), or builtin:demo for the "
                                   "tiny built-in model."),
    prompts: str = typer.Argument(..., help="Prompt file: .jsonl (one JSON object per line) or .txt (one prompt per "
                                  "line), or builtin:demo-prompts.jsonl."),
    recipe: str = typer.Argument(..., help="Recipe file to write (.yaml); an existing file is never overwritten."),
    out: Optional[str] = typer.Option(None, "--out", help="Where the run writes its rows (default: the recipe's "
                                      "name with .jsonl)."),
    gpus: str = typer.Option("auto", "--gpus", help="Size the recipe for: auto (the GPUs found here), cpu, N (N of "
                             "them), or NxMEM for GPUs elsewhere, e.g. 2x48 (two 48 GB GPUs)."),
    max_gen_len: int = typer.Option(256, "--max-gen-len", help="At most this many new tokens per prompt."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="tokenizer.model (default: in the checkpoint "
                                            "folder, else its parent, e.g. /data/LLaMA/tokenizer.model)."),
    prompt_field: str = typer.Option("prompt", "--prompt-field", help="JSONL field holding the prompt text."),
    id_field: str = typer.Option("id", "--id-field", help="JSONL field holding each prompt's unique id."),
) -> None:
    """Write a commented recipe for a checkpoint and prompt file, with batch size and length chosen to fit the GPUs."""
    from llamakit.run.recipe_writer import summary_lines, write_new_recipe

    path, plan, _ = write_new_recipe(recipe, ckpt_dir, prompts, out=out, gpus=gpus, max_gen_len=max_gen_len,
                                     tokenizer=tokenizer, prompt_field=prompt_field, id_field=id_field)
    for line in summary_lines(path, plan):
        console.print(line, markup=False, soft_wrap=True)
