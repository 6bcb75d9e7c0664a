package main

import "testing"

func TestGCPercentGivesAQuarterOfTheLiveHeapAtLeastEightMiB(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 100},
		{4 * mib, 100}, // 8 MiB of headroom would be 200%: Go's default caps it
		{8 * mib, 100},
		{16 * mib, 50},
		{32 * mib, 25},
		{40 * mib, 25}, // a quarter
		{1024 * mib, 25},
	} {
		if got := gcPercentFor(c.live); got != c.want {
			t.Errorf("live %d MiB: GOGC %d, want %d", c.live/mib, got, c.want)
		}
	}
}
