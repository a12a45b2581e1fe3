#!/usr/bin/env bash
# Creates the kiosk's system user and its device groups, idempotently (run as root on the
# Jetson: by deploy.sh, and before each kiosk start by transfusion-setup.service).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: setup-user.sh [USER]

Creates system user USER (default transfusion; home /var/lib/transfusion, no
login shell) and groups gpio and spi if missing (99-transfusion.rules gives
them /dev/gpiochip* and /dev/spidev*), then adds USER to each of video, render,
gpio, spi and i2c that exists. Does nothing that is already done. Needs root.
USAGE
}

case "${1:-}" in -h|--help) usage; exit 0 ;; esac
user=${1:-transfusion}
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-user.sh: needs root (run it with sudo)" >&2
  exit 1
fi

nologin=/usr/sbin/nologin
[ -x "$nologin" ] || nologin=/bin/false
for group in gpio spi; do
  if ! getent group "$group" >/dev/null; then
    groupadd --system "$group"
    echo "created group $group"
  fi
done
if ! getent passwd "$user" >/dev/null; then
  useradd --system --user-group --home-dir /var/lib/transfusion --no-create-home \
    --shell "$nologin" --comment "Transfusion kiosk" "$user"
  echo "created user $user"
fi
for group in video render gpio spi i2c; do
  if getent group "$group" >/dev/null && ! id -nG "$user" | tr ' ' '\n' | grep -qx "$group"; then
    usermod -aG "$group" "$user"
    echo "added $user to $group"
  fi
done
