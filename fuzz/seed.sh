#!/usr/bin/env bash
# Writes the seed corpora under fuzz/corpus/<target>/ from the committed tiny fixture (converted
# with the `transfusion` binary, $TF or target/debug/transfusion) and the board's golden PNGs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
tf=${TF:-$root/target/debug/transfusion}
fixture=$root/tools/tests/fixtures/tiny
corpus=$here/corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$tf" convert "$fixture" -o "$work/bundle" --precision fp32 > /dev/null
mkdir -p "$corpus"/{manifest,checkpoint,bundle,prompt,image,options}

cp "$work/bundle/manifest.json" "$corpus/manifest/tiny.json"
cp "$root/tools/tests/fixtures/tiny/config.json" "$corpus/manifest/config-only.json"

# config.json, a 4-zero-byte mark, model.safetensors (fuzz_targets/checkpoint.rs).
{ cat "$fixture/config.json"; printf '\0\0\0\0'; cat "$fixture/model.safetensors"; } \
  > "$corpus/checkpoint/tiny"

# Selector byte, then the file it replaces (fuzz_targets/bundle.rs: manifest, tokenizer, graphs).
i=0
for rel in manifest.json tokenizer.json fp32/text_embed.onnx fp32/backbone.onnx fp32/lm_head.onnx \
           fp32/patch_in.onnx fp32/patch_out.onnx fp32/vae_encoder.onnx fp32/vae_decoder.onnx; do
  { printf "\\x$(printf %02x "$i")"; cat "$work/bundle/$rel"; } > "$corpus/bundle/$i"
  i=$((i + 1))
done

printf 'a red circle above a blue square' > "$corpus/prompt/plain"
printf 'three GREEN stars, [BOI] [EOS] <boi>\t\n' > "$corpus/prompt/specials"
printf 'caf\xc3\xa9 \xff\xfe na\xefve \xe2\x80\x8b zero-width' > "$corpus/prompt/bytes"

cp "$root"/board/tests/golden/*.png "$corpus/image/"

head -c 256 /dev/zero > "$corpus/options/zeros"
printf '\x00\x00\x80\x3f\x28\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80\x3f' > "$corpus/options/defaults-ish"
echo "seeds written under $corpus"
