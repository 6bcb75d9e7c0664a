package main

import "testing"

func TestGCPercentGivesAQuarterOfTheLiveHeapAtLeastFourMiB(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 100},
		{2 * mib, 100}, // 4 MiB of headroom would be 200%: Go's default caps it
		{4 * mib, 100},
		{8 * mib, 50},
		{16 * mib, 25},
		{32 * mib, 25},
		{40 * mib, 25}, // a quarter
		{1024 * mib, 25},
	} {
		if got := gcPercentFor(c.live); got != c.want {
			t.Errorf("live %d MiB: GOGC %d, want %d", c.live/mib, got, c.want)
		}
	}
}
