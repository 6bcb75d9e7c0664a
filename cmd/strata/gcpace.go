package main

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// Garbage collection pacing.
//
// The daemon's live heap is mostly the nodes of the inodes the kernel
// holds, and Go lets the heap grow by GOGC percent of the live heap before
// it collects again: peak RSS is the live heap times (1 + GOGC/100). Go's
// default of 100 doubles it (ls -lR of the bench's 50,000-entry image: 96
// MiB peak), and a fixed lower percentage makes small heaps collect every
// megabyte or so. So the headroom is a quarter of the live heap, but never
// less than minHeadroom: a big tree costs a quarter more than its nodes
// (73 -> 67 MiB peak on that image, against a fixed 50%), a small mount
// collects no more often than Go's default would. The percentage is set
// again after every collection. GOGC from the environment wins.
//
// minHeadroom is 4 MiB: with 8 MiB, the peak after ls -lR of that image
// (an 18 MiB live heap) was 43.7-45.6 MiB, with 4 MiB 39.6-41.2 MiB, for
// 47 collections instead of 31 over a cold and a warm ls -lR (0.37 s of
// the daemon's CPU instead of 0.23 s, out of about 5 s).

// minHeadroom is the least the heap may grow between collections.
const minHeadroom = 4 << 20

// gcPercentFor is the GOGC that gives a live heap of live bytes its
// headroom: a quarter of it, at least minHeadroom, at most Go's default.
func gcPercentFor(live uint64) int {
	if live == 0 {
		return 100
	}
	pct := int(uint64(100*minHeadroom) / live)
	return min(max(pct, 25), 100)
}

// paceGarbageCollection sets the percentage now and after every
// collection.
func paceGarbageCollection() {
	if os.Getenv("GOGC") != "" {
		return
	}
	debug.SetGCPercent(gcPercentFor(0))
	armPacer(100)
}

// armPacer leaves an object for the next collection to find unreachable;
// its cleanup resets the percentage from the live heap that collection
// measured and arms the next one.
func armPacer(current int) {
	sentinel := new([16]byte)
	runtime.AddCleanup(sentinel, func(current int) {
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		metrics.Read(sample)
		next := current
		if sample[0].Value.Kind() == metrics.KindUint64 {
			next = gcPercentFor(sample[0].Value.Uint64())
		}
		if next != current {
			debug.SetGCPercent(next)
		}
		armPacer(next)
	}, current)
}
