# Sourced by scripts/with-prefect-server and scripts/ui.
#
# `prefect server start --background` refuses to start while $PREFECT_HOME/server.pid exists, even when that
# process is long gone (the server was killed, the machine rebooted). A PID file whose process is not alive is
# removed here, through `prefect server stop`, which says so; a live one (a server on another port) is left alone.
clear_stale_prefect_pid() {
  local pidfile="${PREFECT_HOME:-$HOME/.prefect}/server.pid"
  if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; then
    prefect server stop >/dev/null 2>&1 || rm -f "$pidfile"
  fi
}
