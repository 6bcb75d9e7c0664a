package fuseloop

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// The scheduling class of reaper threads (see "Reapers at idle priority"
// in the package doc).
//
// SCHED_IDLE keeps a process that waits on the filesystem on its CPU, but
// when every CPU is busy with other work an idle-class reaper waits
// longer for its turn than a normal one would. So the guard, while
// requests flow, samples the machine's idle CPU time every classCheck and
// sets Loop.reapersIdle: idle class while at least a quarter of one CPU's
// time went unused, normal class otherwise. Each reaper follows the flag
// before it next waits for a request (ringQueue.followClass).

// ReaperClass says which scheduling class ring reapers run in.
type ReaperClass int

const (
	// ReaperAuto: SCHED_IDLE while the machine has CPU time to spare,
	// the normal class while it does not.
	ReaperAuto ReaperClass = iota
	// ReaperIdle: always SCHED_IDLE.
	ReaperIdle
	// ReaperNormal: always the normal class.
	ReaperNormal
)

// classCheckRounds is how many stall checks (stallCheck apart) pass
// between two samples of /proc/stat: 100 ms.
const classCheckRounds = 20

// schedIdle is the SCHED_IDLE scheduling policy (linux/sched.h).
const schedIdle = 5

// cpuTimes is the machine's CPU time so far, in clock ticks: all of it,
// and the part spent idle (idle and iowait).
type cpuTimes struct{ idle, total uint64 }

// readCPUTimes reads the summary line of /proc/stat.
func readCPUTimes() (cpuTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	fields := bytes.Fields(line)
	if len(fields) < 6 || string(fields[0]) != "cpu" {
		return cpuTimes{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var t cpuTimes
	// user nice system idle iowait irq softirq steal [guest guest_nice],
	// where guest time is already counted in user and nice.
	for i, f := range fields[1:min(len(fields), 9)] {
		v, err := strconv.ParseUint(string(f), 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("/proc/stat: %w", err)
		}
		t.total += v
		if i == 3 || i == 4 {
			t.idle += v
		}
	}
	return t, nil
}

// spareCPU tells whether, between two samples, at least a quarter of one
// CPU's time went unused on a machine of ncpu CPUs. Without ticks in
// between it says yes (nothing was busy).
func spareCPU(before, after cpuTimes, ncpu int) bool {
	total := after.total - before.total
	idle := after.idle - before.idle
	if total == 0 || after.total < before.total {
		return true
	}
	return idle*4*uint64(max(ncpu, 1)) >= total
}

// setThreadClass puts the calling thread in SCHED_IDLE or back in the
// normal class (SCHED_OTHER, nice 0).
func setThreadClass(idle bool) error {
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr}
	if idle {
		attr.Policy = schedIdle
	}
	return unix.SchedSetAttr(0, &attr, 0)
}

// classSampler is the guard's state for choosing the reapers' class.
type classSampler struct {
	last   cpuTimes
	ok     bool // last is a valid sample
	rounds int
}

// tick is called by the guard on each check while requests flow; every
// classCheckRounds it samples and updates l.reapersIdle.
func (c *classSampler) tick(l *Loop) {
	if l.rings == nil || l.opts.ReaperClass != ReaperAuto {
		return
	}
	if c.rounds++; c.rounds < classCheckRounds && c.ok {
		return
	}
	c.rounds = 0
	now, err := readCPUTimes()
	if err != nil {
		c.ok = false
		return // keep the class as it is
	}
	if c.ok {
		l.reapersIdle.Store(spareCPU(c.last, now, len(l.rings.queues)))
	}
	c.last, c.ok = now, true
}

// restart forgets the last sample: after the guard slept, the time since
// says nothing about the load now.
func (c *classSampler) restart() { c.ok = false }
