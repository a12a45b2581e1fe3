#!/usr/bin/env bash
# Cross toolchain for Jetson builds, shared by board/jetson/build.sh and .ci/aarch64.sh.
# Source it, then call tf_ensure_cross_toolchain. Idempotent and cache-aware: each piece is
# installed only when missing.
#
#   rustup target   aarch64-unknown-linux-gnu (std for the target)
#   cargo-zigbuild  from crates.io, `cargo install --locked` (pinned below)
#   zig             from PyPI's `ziglang` package, in a venv under $TRANSFUSION_CACHE (pinned);
#                   exported to cargo-zigbuild as CARGO_ZIGBUILD_ZIG_PATH
#
# zig links against a glibc of our choosing: target aarch64-unknown-linux-gnu.2.31 gives a
# binary that needs nothing newer than glibc 2.31, so the same file runs on JetPack 5.1
# (L4T 35, glibc 2.31) and JetPack 6 (L4T 36, glibc 2.35).
#
# Environment: TRANSFUSION_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/transfusion),
# CARGO_ZIGBUILD_ZIG_PATH (use this zig instead), ZIGLANG_VERSION, CARGO_ZIGBUILD_VERSION.

# Versions tried together here (cargo-zigbuild 0.24.1 + zig 0.17.1, rustc 1.95).
: "${CARGO_ZIGBUILD_VERSION:=0.24.1}"
: "${ZIGLANG_VERSION:=0.17.1}"
: "${TRANSFUSION_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/transfusion}"
TF_RUST_TARGET=aarch64-unknown-linux-gnu
# shellcheck disable=SC2034  # read by the scripts that source this file
TF_GLIBC=2.31  # newest glibc a Jetson binary may need (JetPack 5.1)

tf_log() { printf '[toolchain] %s\n' "$*" >&2; }

tf_ensure_rust_target() {
  if ! command -v rustup >/dev/null 2>&1; then
    tf_log "rustup not found: assuming the toolchain already has $TF_RUST_TARGET"
    return 0
  fi
  if ! rustup target list --installed | grep -qx "$TF_RUST_TARGET"; then
    tf_log "rustup target add $TF_RUST_TARGET"
    rustup target add "$TF_RUST_TARGET"
  fi
}

tf_ensure_zigbuild() {
  if command -v cargo-zigbuild >/dev/null 2>&1; then
    return 0
  fi
  tf_log "cargo install cargo-zigbuild@$CARGO_ZIGBUILD_VERSION --locked (a few minutes, once)"
  cargo install --locked --version "$CARGO_ZIGBUILD_VERSION" cargo-zigbuild
}

tf_ensure_zig() {
  if [ -n "${CARGO_ZIGBUILD_ZIG_PATH:-}" ] && [ -x "$CARGO_ZIGBUILD_ZIG_PATH" ]; then
    return 0
  fi
  local venv="$TRANSFUSION_CACHE/zig-venv"
  local py="$venv/bin/python"
  if [ ! -x "$py" ] || ! "$py" -c "import ziglang" >/dev/null 2>&1 ||
     [ "$("$py" -c 'import importlib.metadata as m; print(m.version("ziglang"))')" != "$ZIGLANG_VERSION" ]; then
    tf_log "pip install ziglang==$ZIGLANG_VERSION into $venv"
    mkdir -p "$TRANSFUSION_CACHE"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "ziglang==$ZIGLANG_VERSION"
  fi
  CARGO_ZIGBUILD_ZIG_PATH=$("$py" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')
  export CARGO_ZIGBUILD_ZIG_PATH
  if [ ! -x "$CARGO_ZIGBUILD_ZIG_PATH" ]; then
    tf_log "ziglang installed but $CARGO_ZIGBUILD_ZIG_PATH is not executable"
    return 1
  fi
}

tf_ensure_cross_toolchain() {
  tf_ensure_rust_target
  tf_ensure_zigbuild
  tf_ensure_zig
  tf_log "zig $("$CARGO_ZIGBUILD_ZIG_PATH" version), $(cargo-zigbuild --version)"
}
