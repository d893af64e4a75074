# Sourced by scripts/test.sh: Chromium for the report's browser test (tests/test_report.py).
# Installs the Debian package when it can (root with apt-get); when no browser can be had, exports
# FEDLR_NO_BROWSER with the reason, and that one test skips saying it.
chromium_found() { command -v chromium || command -v chromium-browser || command -v google-chrome; } >/dev/null
if ! chromium_found; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "fedlr test: installing Chromium (apt-get install chromium) for the report's browser test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 || true
    chromium_found || FEDLR_NO_BROWSER="no Chromium: apt-get install chromium failed (offline?)"
  else
    FEDLR_NO_BROWSER="no Chromium, and scripts/test.sh cannot install it (needs root and apt-get)"
  fi
  if [ -n "${FEDLR_NO_BROWSER:-}" ]; then
    export FEDLR_NO_BROWSER
    echo "fedlr test: $FEDLR_NO_BROWSER; the report's browser test will be skipped" >&2
  fi
fi
