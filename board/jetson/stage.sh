#!/usr/bin/env bash
# Staging shared by deploy.sh and install-rootfs.sh: lays out, under a directory, the files the
# kiosk needs on a Jetson, exactly as they go on the device (opt/transfusion/..., etc/...).
# Source it; it defines functions only.

# The default bundle: the shipped model (converted from models/shapes64/checkpoint on first use
# by any example, or by `transfusion convert`), else the examples' untrained fallback.
tf_default_model() {
  local root=$1
  if [ -f "$root/models/shapes64/bundle/manifest.json" ]; then
    printf '%s\n' "$root/models/shapes64/bundle"
  elif [ -f "$root/models/shapes64/checkpoint/model.safetensors" ]; then
    echo "models/shapes64/bundle is not converted yet: run \`cargo run --release --example generate -- test\` once (it converts the shipped checkpoint), or \`transfusion convert models/shapes64/checkpoint -o models/shapes64/bundle\`" >&2
    return 1
  elif [ -f "$root/target/untrained-shapes64/bundle/manifest.json" ]; then
    echo "warning: no trained model in models/shapes64/bundle; deploying the UNTRAINED fallback (pictures are noise)" >&2
    printf '%s\n' "$root/target/untrained-shapes64/bundle"
  else
    echo "no model: pass --model DIR (a converted bundle; \`cargo run --example generate -- test\` creates the untrained fallback)" >&2
    return 1
  fi
}

# Succeeds when FILE is a 64-bit little-endian ELF for aarch64 (e_machine 0xB7).
tf_is_aarch64_elf() {
  local file=$1
  [ "$(od -An -tx1 -N4 "$file" | tr -d ' \n')" = 7f454c46 ] &&
    [ "$(od -An -tx1 -j18 -N2 "$file" | tr -d ' \n')" = b700 ]
}

# Succeeds when FILE links tract-cuda (a kiosk built with build.sh --cuda): its panic locations
# name the crate's sources (.../tract-cuda-0.23.9/src/...), which no CPU-only build contains.
tf_has_cuda() {
  grep -q -a 'tract-cuda-0\.' "$1"
}

# tf_stage DEST BINARY MODEL CONFIG PROMPTS [CUDA]
# CUDA=yes also stages the unit's CUDA drop-in and cuda-setup.sh, checks that the binary has
# CUDA, and turns a config's `device = "cpu"` into "auto" (GPU when the preflight passes,
# else the CPU with the reason logged).
tf_stage() {
  local dest=$1 binary=$2 model=$3 config=$4 prompts=$5 cuda=${6:-no}
  local here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  [ -f "$binary" ] || { echo "kiosk binary $binary not found (board/jetson/build.sh builds it)" >&2; return 1; }
  tf_is_aarch64_elf "$binary" || {
    echo "$binary is not an aarch64 ELF binary (built for this host? use board/jetson/build.sh)" >&2
    return 1
  }
  [ -f "$model/manifest.json" ] || { echo "$model is not a bundle (no manifest.json)" >&2; return 1; }
  [ -f "$config" ] || { echo "config $config not found" >&2; return 1; }
  [ -f "$prompts" ] || { echo "prompts file $prompts not found" >&2; return 1; }

  install -d -m 0755 "$dest/opt/transfusion/bin" "$dest/etc/systemd/system" "$dest/etc/udev/rules.d"
  install -m 0755 "$binary" "$dest/opt/transfusion/bin/kiosk"
  install -m 0755 "$here/setup-user.sh" "$dest/opt/transfusion/setup-user.sh"
  install -m 0644 "$config" "$dest/opt/transfusion/kiosk.toml"
  install -m 0644 "$prompts" "$dest/opt/transfusion/prompts.txt"
  mkdir -p "$dest/opt/transfusion/model"
  cp -r "$model/." "$dest/opt/transfusion/model/"
  chmod -R a+rX,go-w "$dest/opt/transfusion/model"
  install -m 0644 "$here/transfusion-kiosk.service" "$here/transfusion-setup.service" \
    "$dest/etc/systemd/system/"
  install -m 0644 "$here/99-transfusion.rules" "$dest/etc/udev/rules.d/"
  if [ "$cuda" = yes ]; then
    tf_has_cuda "$binary" || {
      echo "$binary was built without CUDA: build it with board/jetson/build.sh --cuda" >&2
      return 1
    }
    install -d -m 0755 "$dest/etc/systemd/system/transfusion-kiosk.service.d"
    install -m 0644 "$here/transfusion-kiosk.service.d/cuda.conf" \
      "$dest/etc/systemd/system/transfusion-kiosk.service.d/cuda.conf"
    install -m 0755 "$here/cuda-setup.sh" "$dest/opt/transfusion/cuda-setup.sh"
    if grep -q '^device = "cpu"' "$dest/opt/transfusion/kiosk.toml"; then
      sed -i 's/^device = "cpu"/device = "auto"  # set by --cuda: the GPU, else the CPU (reason logged)/' \
        "$dest/opt/transfusion/kiosk.toml"
      echo "config: device = \"auto\" (was \"cpu\"); set \"cuda\" to fail instead of falling back" >&2
    fi
  fi
}
