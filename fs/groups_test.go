package fs

import (
	"os"
	"slices"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// A caller in the file's group by a supplementary group gets the group
// bits, even where they allow less than the other bits; /proc is asked
// only when the answer depends on it.
func TestMayAccessSupplementaryGroup(t *testing.T) {
	caller := &fuse.Caller{Owner: fuse.Owner{Uid: 1000, Gid: 1000}, Pid: 1}
	cases := []struct {
		mode    uint32
		mask    uint32
		inGroup bool
		want    bool
		asks    bool
	}{
		{0o750, unix.X_OK, true, true, true},
		{0o750, unix.X_OK, false, false, true},
		{0o705, unix.R_OK, true, false, true}, // the group bits apply, and deny
		{0o705, unix.R_OK, false, true, true},
		{0o755, unix.R_OK, true, true, false}, // same either way: not asked
		{0o700, unix.W_OK, false, false, false},
	}
	for _, c := range cases {
		asked := false
		inGroup := func(gid uint32) bool {
			asked = true
			if gid != 50 {
				t.Errorf("asked about group %d, want the file's group 50", gid)
			}
			return c.inGroup
		}
		a := &fuse.Attr{Mode: unix.S_IFREG | c.mode, Owner: fuse.Owner{Uid: 0, Gid: 50}}
		if got := mayAccess(caller, a, c.mask, inGroup); got != c.want || asked != c.asks {
			t.Errorf("mode %o mask %d in group %v: allowed %v (asked %v), want %v (asked %v)",
				c.mode, c.mask, c.inGroup, got, asked, c.want, c.asks)
		}
	}
}

func TestStatusGroups(t *testing.T) {
	status := []byte("Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 1000 \nNgid:\t0\n")
	if got, want := statusGroups(status), []uint32{4, 24, 27, 1000}; !slices.Equal(got, want) {
		t.Errorf("groups %v, want %v", got, want)
	}
	if got := statusGroups([]byte("Name:\tsh\nGroups:\t\n")); len(got) != 0 {
		t.Errorf("empty Groups line gave %v", got)
	}
}

// The groups read from /proc are the process's own.
func TestInSupplementaryGroupReadsProc(t *testing.T) {
	groups, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	pid := uint32(os.Getpid())
	for _, g := range groups {
		if !inSupplementaryGroup(pid, uint32(g)) {
			t.Errorf("group %d of this process not found", g)
		}
	}
	const unlikely = 4_000_000_000
	if slices.Contains(groups, unlikely) || inSupplementaryGroup(pid, unlikely) {
		t.Errorf("group %d reported", unlikely)
	}
	if inSupplementaryGroup(0, uint32(os.Getgid())) {
		t.Error("pid 0 (a caller the daemon cannot see) reported in a group")
	}
}
