#!/bin/bash
# Every 60 s: each vespo process's RSS (MB) and the machine's available memory (MB); how heap/rss-*.log were taken:
#   setsid nohup bash reports/staleness-ii/heap/rsslog.sh > /tmp/rss.log 2>&1 < /dev/null &
while true; do
  ts=$(date +%H:%M:%S)
  for p in $(pgrep -f "vespo_cli"); do
    rss=$(awk '/VmRSS/{print $2}' /proc/$p/status 2>/dev/null)
    cmd=$(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | cut -c1-80)
    echo "$ts $p $((rss/1024)) $cmd"
  done
  echo "$ts avail $(free -m | awk '/Mem:/{print $7}')"
  sleep 60
done
