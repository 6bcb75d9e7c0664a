package fs

import "testing"

// The caches get their caps under a generous descriptor limit and shares
// of a low one, always leaving at least three eighths of it for handles.
func TestDescriptorBudget(t *testing.T) {
	for _, c := range []struct{ limit, dirFds, idle int64 }{
		{512, 128, 192},
		{1024, 256, 384},
		{4096, 1024, 1536},
		{20000, 4096, 7952},
		{1 << 20, 4096, 8192},
		{0, 0, 0},
	} {
		dirFds, idle := descriptorBudget(c.limit)
		if dirFds != c.dirFds || idle != c.idle {
			t.Errorf("limit %d: %d directory descriptors and %d idle registrations, want %d and %d", c.limit, dirFds, idle, c.dirFds, c.idle)
		}
		if left := c.limit - dirFds - idle; left*8 < c.limit*3 {
			t.Errorf("limit %d: %d left for handles, under three eighths", c.limit, left)
		}
	}
}
