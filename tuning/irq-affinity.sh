#!/usr/bin/env bash
# Steers a NIC's interrupts, RPS and XPS to the housekeeping CPUs, away from the CPUs
# that run triggerd's HTTP cores and storage core. Prints what it would do; changes
# nothing unless given --apply.
#
#   tuning/irq-affinity.sh eth0 0-1            # show the plan: NIC eth0, housekeeping CPUs 0-1
#   sudo tuning/irq-affinity.sh eth0 0-1 --apply
#
# Stop irqbalance first (systemctl disable --now irqbalance), or it will undo this.
set -euo pipefail
nic="${1:?usage: irq-affinity.sh <nic> <housekeeping-cpu-list> [--apply]}"
cpus="${2:?usage: irq-affinity.sh <nic> <housekeeping-cpu-list> [--apply]}"
apply="${3:-}"

# CPU list (0-1,4) -> hexadecimal mask for the /proc and /sys files.
mask=$(python3 - "$cpus" <<'PY'
import sys
m = 0
for part in sys.argv[1].split(","):
    a, _, b = part.partition("-")
    for c in range(int(a), int(b or a) + 1):
        m |= 1 << c
print(format(m, "x"))
PY
)

do_write() { # file, value
    if [ "$apply" = "--apply" ]; then
        echo "$2" >"$1" && echo "set   $1 = $2"
    else
        echo "would $1 = $2 (now $(cat "$1" 2>/dev/null || echo '?'))"
    fi
}

irqs=$(awk -v nic="$nic" '$0 ~ nic {sub(":", "", $1); print $1}' /proc/interrupts)
[ -n "$irqs" ] || echo "no interrupts named after $nic in /proc/interrupts (virtio NICs may be named virtio*-input)"
for irq in $irqs; do
    do_write "/proc/irq/$irq/smp_affinity" "$mask"
done
for queue in /sys/class/net/"$nic"/queues/rx-*; do
    [ -e "$queue/rps_cpus" ] && do_write "$queue/rps_cpus" "$mask"
done
for queue in /sys/class/net/"$nic"/queues/tx-*; do
    [ -e "$queue/xps_cpus" ] && do_write "$queue/xps_cpus" "$mask"
done
[ "$apply" = "--apply" ] || echo "(dry run: nothing changed; add --apply to change it)"
