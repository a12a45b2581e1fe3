#!/usr/bin/env bash
# Deploys the kiosk to a running Jetson over ssh: binary, model bundle, config, prompts, systemd
# units and udev rules into /opt/transfusion (+ /etc), creates the `transfusion` user, enables
# and (re)starts the service and shows its status.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: board/jetson/deploy.sh [options] HOST

Copies the kiosk to HOST (an ssh destination such as nvidia@orin.local; its
user needs sudo) and starts it as transfusion-kiosk.service:

  /opt/transfusion/bin/kiosk          the aarch64 binary (board/jetson/build.sh)
  /opt/transfusion/model/             the bundle directory
  /opt/transfusion/kiosk.toml         config (an existing one is kept as kiosk.toml.old)
  /opt/transfusion/prompts.txt        prompts
  /opt/transfusion/setup-user.sh      creates the user and groups (also run at each start)
  /etc/systemd/system/transfusion-{kiosk,setup}.service
  /etc/udev/rules.d/99-transfusion.rules   gpiochip -> group gpio, spidev -> group spi

With --cuda also /etc/systemd/system/transfusion-kiosk.service.d/cuda.conf (GPU
device nodes, JIT, kernel cache in /var/cache/transfusion, CUDA_HOME, warm-up
before each start) and /opt/transfusion/cuda-setup.sh, which installs the
JetPack packages tract-cuda loads (cuda-cudart, cuda-cudart-dev, cuda-nvrtc,
libcublas, cuda-cccl, libcudnn9 (JetPack 6.0: libcudnn8 + -dev) for the board's CUDA version).
The preflight (kiosk --check) runs as the service user, then the restart runs
the warm-up: the first one compiles the GPU kernels (minutes on an Orin).

Options:
  --binary PATH    kiosk binary (default target/aarch64-unknown-linux-gnu/release/kiosk;
                   built with build.sh when missing)
  --model DIR      bundle (default models/shapes64/bundle, else the untrained fallback
                   target/untrained-shapes64/bundle)
  --config FILE    config (default board/jetson/kiosk.toml)
  --prompts FILE   prompts (default board/jetson/prompts.txt)
  --cuda           the CUDA variant (binary from build.sh --cuda; built when missing)
  --no-apt         with --cuda: only check the packages, fail listing missing ones
  --no-start       install and enable, but do not (re)start now (with --cuda: still
                   runs the warm-up once, as the service user)
  -n, --dry-run    stage the files locally and print what would be run; touch no host
  -h, --help       this help

ssh options (port, key) come from ~/.ssh/config or $DEPLOY_SSH_OPTS (e.g. "-p 2222").
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
binary="$root/target/aarch64-unknown-linux-gnu/release/kiosk"
model=""
config="$here/kiosk.toml"
prompts="$here/prompts.txt"
start=yes
cuda=no
apt=yes
dry_run=no
host=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) [ $# -ge 2 ] || { usage >&2; exit 2; }; binary=$2; shift 2 ;;
    --model) [ $# -ge 2 ] || { usage >&2; exit 2; }; model=$2; shift 2 ;;
    --config) [ $# -ge 2 ] || { usage >&2; exit 2; }; config=$2; shift 2 ;;
    --prompts) [ $# -ge 2 ] || { usage >&2; exit 2; }; prompts=$2; shift 2 ;;
    --no-start) start=no; shift ;;
    --cuda) cuda=yes; shift ;;
    --no-apt) apt=no; shift ;;
    -n|--dry-run) dry_run=yes; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) printf 'deploy.sh: unknown option %q\n\n' "$1" >&2; usage >&2; exit 2 ;;
    *) [ -z "$host" ] || { echo "deploy.sh: one HOST only" >&2; exit 2; }; host=$1; shift ;;
  esac
done
if [ -z "$host" ]; then
  usage >&2
  exit 2
fi

# shellcheck source=SCRIPTDIR/stage.sh
. "$here/stage.sh"
if [ -z "$model" ]; then model=$(tf_default_model "$root"); fi
if [ ! -x "$binary" ]; then
  if [ "$cuda" = yes ]; then
    echo "deploy.sh: $binary missing: building it with board/jetson/build.sh --cuda" >&2
    binary=$("$here/build.sh" --cuda)
  else
    echo "deploy.sh: $binary missing: building it with board/jetson/build.sh" >&2
    binary=$("$here/build.sh")
  fi
fi

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
tf_stage "$staging/transfusion" "$binary" "$model" "$config" "$prompts" "$cuda"
cuda_setup_args=""
if [ "$apt" = no ]; then cuda_setup_args="--check"; fi

remote_dir="/tmp/transfusion-deploy.$$"
# Runs on the Jetson as root: install the staged tree, create the user, (re)start the service.
remote_script=$(cat <<REMOTE
set -euo pipefail
src="$remote_dir/transfusion"
install -d -m 0755 /opt/transfusion /opt/transfusion/bin
install -m 0755 "\$src/opt/transfusion/bin/kiosk" /opt/transfusion/bin/kiosk.new
mv -f /opt/transfusion/bin/kiosk.new /opt/transfusion/bin/kiosk
install -m 0755 "\$src/opt/transfusion/setup-user.sh" /opt/transfusion/setup-user.sh
rm -rf /opt/transfusion/model.new
cp -r "\$src/opt/transfusion/model" /opt/transfusion/model.new
chmod -R a+rX /opt/transfusion/model.new
rm -rf /opt/transfusion/model.old
if [ -e /opt/transfusion/model ]; then mv /opt/transfusion/model /opt/transfusion/model.old; fi
mv /opt/transfusion/model.new /opt/transfusion/model
rm -rf /opt/transfusion/model.old
if [ -e /opt/transfusion/kiosk.toml ] && ! cmp -s /opt/transfusion/kiosk.toml "\$src/opt/transfusion/kiosk.toml"; then
  cp /opt/transfusion/kiosk.toml /opt/transfusion/kiosk.toml.old
  echo "kept the previous config as /opt/transfusion/kiosk.toml.old"
fi
install -m 0644 "\$src/opt/transfusion/kiosk.toml" "\$src/opt/transfusion/prompts.txt" /opt/transfusion/
install -m 0644 "\$src/etc/systemd/system/transfusion-kiosk.service" "\$src/etc/systemd/system/transfusion-setup.service" /etc/systemd/system/
install -m 0644 "\$src/etc/udev/rules.d/99-transfusion.rules" /etc/udev/rules.d/
dropin=/etc/systemd/system/transfusion-kiosk.service.d
if [ "$cuda" = yes ]; then
  install -m 0755 "\$src/opt/transfusion/cuda-setup.sh" /opt/transfusion/cuda-setup.sh
  install -d -m 0755 "\$dropin"
  install -m 0644 "\$src\$dropin/cuda.conf" "\$dropin/cuda.conf"
else
  # A CPU deployment after a CUDA one: no GPU drop-in.
  rm -f "\$dropin/cuda.conf" "\$dropin/cuda-home.conf" /opt/transfusion/cuda-setup.sh
fi
/opt/transfusion/setup-user.sh
if [ "$cuda" = yes ]; then
  /opt/transfusion/cuda-setup.sh $cuda_setup_args
fi
udevadm control --reload
udevadm trigger --subsystem-match=gpio --subsystem-match=spidev || true
systemctl daemon-reload
systemctl enable transfusion-kiosk.service
if [ "$cuda" = yes ]; then
  # The unit's environment, for the preflight and a warm-up outside the unit.
  cache=/var/cache/transfusion
  install -d -o transfusion -g transfusion -m 0700 "\$cache"
  cuda_home=/usr/local/cuda
  if [ -f "\$dropin/cuda-home.conf" ]; then
    cuda_home=\$(sed -n 's/^Environment=CUDA_HOME=//p' "\$dropin/cuda-home.conf")
  fi
  as_kiosk=(runuser -u transfusion -- env XDG_CACHE_HOME="\$cache" CUDA_HOME="\$cuda_home"
    LD_LIBRARY_PATH="\$cuda_home/lib64" RUST_LOG=warn /opt/transfusion/bin/kiosk
    --config /opt/transfusion/kiosk.toml)
  echo "--- preflight (kiosk --check, as transfusion) ---"
  "\${as_kiosk[@]}" --check || echo "preflight failed: see above"
  if [ "$start" = no ]; then
    echo "--- warm-up (compiles the GPU kernels; minutes the first time) ---"
    "\${as_kiosk[@]}" --warm-up
  fi
fi
if [ "$start" = yes ]; then
  if [ "$cuda" = yes ]; then
    echo "restarting: the unit's warm-up compiles the GPU kernels first (minutes the first time)"
  fi
  if ! systemctl restart transfusion-kiosk.service; then
    journalctl -u transfusion-kiosk --no-pager -n 60 || true
    exit 1
  fi
  sleep 3
fi
systemctl --no-pager --full status transfusion-kiosk.service || true
rm -rf "$remote_dir"
REMOTE
)
printf '%s\n' "$remote_script" > "$staging/install.sh"

read -r -a ssh_opts <<< "${DEPLOY_SSH_OPTS:-}"
if [ "$dry_run" = yes ]; then
  echo "dry run: staged tree:"
  (cd "$staging" && find . -type f | sort)
  echo "would run: scp -r ${ssh_opts[*]} $staging/. $host:$remote_dir/"
  echo "would run: ssh -t ${ssh_opts[*]} $host sudo bash $remote_dir/install.sh"
  echo "--- install.sh ---"
  cat "$staging/install.sh"
  exit 0
fi

echo "copying to $host:$remote_dir ..."
# shellcheck disable=SC2029  # $remote_dir is meant to expand here
ssh "${ssh_opts[@]}" "$host" "mkdir -p '$remote_dir'"
scp -q -r "${ssh_opts[@]/#-p/-P}" "$staging/." "$host:$remote_dir/"
echo "installing (sudo may ask for the password of the remote user) ..."
# shellcheck disable=SC2029
ssh -t "${ssh_opts[@]}" "$host" "sudo bash '$remote_dir/install.sh'"
echo "logs: ssh $host journalctl -u transfusion-kiosk -f"
