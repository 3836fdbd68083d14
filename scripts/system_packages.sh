#!/usr/bin/env bash
# The Debian packages the reader's side of the study needs, installed when missing (as root, with apt-get):
#   graphviz        the `dot` program behind chapter 1's unit diagrams (the PyPI `graphviz` package only calls it)
#   chromium        the browser that `make test-browser` drives through Playwright (`playwright install` cannot
#                   download one on these machines)
#   libjs-mathjax   MathJax, copied into the offline HTML edition (`make html`) so that its maths needs no network
#   fonts-dejavu-core  glyphs for the diagrams' labels and the screenshots
# Does nothing when every program is already there.
set -euo pipefail
need=()
command -v dot >/dev/null || need+=(graphviz)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -f /usr/share/javascript/mathjax/MathJax.js ] || need+=(libjs-mathjax)
[ -d /usr/share/fonts/truetype/dejavu ] || need+=(fonts-dejavu-core)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${need[*]}; install them with: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
