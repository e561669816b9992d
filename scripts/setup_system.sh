#!/usr/bin/env bash
# Installs the Debian packages the built-in dataset is made from (see ../shared/DATA.md in the team docs):
# text (KJV, WordNet, fortunes), speech engines (espeak-ng, flite, sox) and fonts (emoji; the OCR lines' Latin
# families: DejaVu, Liberation, FreeFont, URW, TeX Gyre, Open Sans, Lato, Go, Libertine, EB Garamond,
# Inconsolata, Cantarell, Caladea/Carlito, Courier Prime; held out: Roboto Slab, Charis SIL). With --test also chromium,
# the browser the tests drive serve.py's chat page with (make test asks for it; make demo does not need it).
# Uses apt-get when run as root or with passwordless sudo; otherwise prints the exact command to run.
set -euo pipefail
PACKAGES="bible-kjv bible-kjv-text wordnet-base fortunes-min espeak-ng flite sox fonts-noto-color-emoji fonts-dejavu-core
fonts-dejavu-extra fonts-liberation fonts-liberation2 fonts-freefont-ttf fonts-urw-base35 fonts-texgyre fonts-open-sans
fonts-lato fonts-go fonts-linuxlibertine fonts-ebgaramond fonts-inconsolata fonts-cantarell fonts-crosextra-caladea
fonts-crosextra-carlito fonts-courier-prime fonts-roboto-slab fonts-sil-charis"
[ "${1:-}" = "--test" ] && PACKAGES="$PACKAGES chromium"

missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

cmd="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$missing"
if [ "$(id -u)" = 0 ]; then
  echo "installing system packages:$missing"
  bash -c "$cmd"
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  echo "installing system packages with sudo:$missing"
  sudo bash -c "$cmd"
else
  echo "missing system packages:$missing" >&2
  echo "install them with:  sudo bash -c '$cmd'" >&2
  exit 1
fi
