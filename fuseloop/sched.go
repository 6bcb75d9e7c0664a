package fuseloop

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// The scheduling class of reaper threads (see "Reapers at idle priority"
// in the package doc).
//
// SCHED_IDLE keeps a process that waits on the filesystem on its CPU, but
// a SCHED_IDLE thread on a CPU that other work keeps busy waits for its
// turn longer than a normal one, the longer the more work competes (its
// scheduling weight is the smallest there is). So under ReaperAuto reapers are in the idle class only while
// requests flow and the idle class leaves CPU time to spare. The guard,
// while awake, samples the machine's CPU times every classCheckRounds
// checks (100 ms): a span spent in the idle class that left at least a
// quarter of one CPU unused keeps the idle class, one that did not moves
// the reapers to the normal class; from the normal class the idle class
// is tried again after classProbeEvery spans (the normal class keeps both
// CPUs busy by itself, so its own spans cannot tell). Reapers are in the
// normal class for the first span after a quiet spell, before the guard
// sleeps (so a request after a quiet spell never waits behind busy CPUs)
// and when the connection ends (so the teardown does not either). The
// guard moves the threads itself, by thread id (reaperThreads): a reaper
// starved of CPU could not move itself.

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
// and the part spent idle (idle and iowait), over cpus online CPUs.
type cpuTimes struct {
	idle, total uint64
	cpus        int
}

// readCPUTimes reads the summary line of /proc/stat and counts the lines
// of the online CPUs after it.
func readCPUTimes() (cpuTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	line, rest, _ := bytes.Cut(b, []byte("\n"))
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
	for len(rest) > 4 && bytes.HasPrefix(rest, []byte("cpu")) && rest[3] >= '0' && rest[3] <= '9' {
		t.cpus++
		_, rest, _ = bytes.Cut(rest, []byte("\n"))
	}
	return t, nil
}

// spareCPU tells whether, between two samples, at least a quarter of one
// CPU's time went unused. Without ticks in between it says yes (nothing
// was busy).
func spareCPU(before, after cpuTimes) bool {
	total := after.total - before.total
	idle := after.idle - before.idle
	if total == 0 || after.total < before.total {
		return true
	}
	return idle*4*uint64(max(after.cpus, 1)) >= total
}

// reaperThreads are the threads of a Loop's rings, by thread id, and the
// class they are in. Threads join when they start and leave before they
// end, so a thread id here is never one the kernel reused for another
// thread; mu is held while the class of the threads is changed.
type reaperThreads struct {
	mu     sync.Mutex
	l      *Loop
	tids   map[int]struct{}
	idle   bool
	logged bool // a class change failed and was logged
}

// init sets the class reapers start in: idle for ReaperIdle, normal
// otherwise (ReaperAuto moves them once requests flow).
func (r *reaperThreads) init(l *Loop) {
	r.l, r.tids = l, map[int]struct{}{}
	r.idle = l.rings != nil && l.opts.ReaperClass == ReaperIdle
}

// join adds the calling thread in the current class and returns the
// function that takes it out again.
func (r *reaperThreads) join() (leave func()) {
	tid := unix.Gettid()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tids[tid] = struct{}{}
	if r.idle {
		r.setClassOf(tid, true)
	}
	return func() {
		r.mu.Lock()
		delete(r.tids, tid)
		r.mu.Unlock()
	}
}

// isIdle tells whether the reaper threads are in the idle class.
func (r *reaperThreads) isIdle() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.idle
}

// set moves every reaper thread to the idle or the normal class.
func (r *reaperThreads) set(idle bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if idle == r.idle {
		return
	}
	r.idle = idle
	for tid := range r.tids {
		r.setClassOf(tid, idle)
	}
}

// setClassOf moves thread tid (r.mu held); a failure is logged once and
// leaves it where it is.
func (r *reaperThreads) setClassOf(tid int, idle bool) {
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr}
	if idle {
		attr.Policy = schedIdle
	}
	if err := unix.SchedSetAttr(tid, &attr, 0); err != nil && !r.logged {
		r.logged = true
		r.l.opts.Logger.Printf("fuseloop: scheduling class of ring thread %d: %v", tid, err)
	}
}

// classSampler is the guard's state for choosing the reapers' class.
type classSampler struct {
	last   cpuTimes
	ok     bool // last is a valid sample
	rounds int
	// normalSpans counts samples taken with the reapers in the normal
	// class since they were last tried in the idle class.
	normalSpans int
}

// classProbeEvery is how many samples in the normal class pass before the
// idle class is tried again: the samples taken in the normal class cannot
// tell whether the idle class would do, because the normal class itself
// keeps both CPUs busy (the waiting process moves with every answer).
const classProbeEvery = 10

// tick is called by the guard on each check while it is awake; every
// classCheckRounds it samples the CPU times and, under ReaperAuto, sets
// the reapers' class: after a span in the idle class, idle again if that
// span left CPU time to spare and normal if not; from the normal class,
// the idle class is tried after the first span that follows a quiet
// spell and then every classProbeEvery spans.
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
		l.reapers.set(false) // without samples, the class that cannot starve
		return
	}
	if c.ok {
		switch {
		case l.reapers.isIdle():
			l.reapers.set(spareCPU(c.last, now))
		case c.normalSpans == 0 || c.normalSpans >= classProbeEvery:
			c.normalSpans = 0
			l.reapers.set(true)
		}
		if !l.reapers.isIdle() {
			c.normalSpans++
		}
	}
	c.last, c.ok = now, true
}

// sleeping is called when the guard is about to sleep: under ReaperAuto
// the reapers go back to the normal class, and sampling starts afresh
// when the guard wakes (the time asleep says nothing about the load then).
func (c *classSampler) sleeping(l *Loop) {
	c.ok, c.rounds, c.normalSpans = false, 0, 0
	if l.rings != nil && l.opts.ReaperClass == ReaperAuto {
		l.reapers.set(false)
	}
}
