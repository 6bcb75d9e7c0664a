package fs

import (
	"bytes"
	"os"
	"slices"
	"strconv"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// A request names the caller's uid, primary gid and thread id only; the
// supplementary groups, which decide set-id handling and ACCESS answers,
// come from /proc.

// callerInGroup reports whether the caller has gid as its group or one of
// its supplementary groups; when it cannot tell, it says yes (a set-id
// bit is then left as it was).
func callerInGroup(c *fuse.Context, gid uint32) bool {
	if c.Caller.Gid == gid {
		return true
	}
	groups, ok := callerGroups(c.Caller.Pid)
	return !ok || slices.Contains(groups, gid)
}

// inSupplementaryGroup reports whether the calling thread pid is in group
// gid besides its primary group. A caller the daemon cannot see (pid 0:
// from another pid namespace; or gone) is in none.
func inSupplementaryGroup(pid, gid uint32) bool {
	groups, ok := callerGroups(pid)
	return ok && slices.Contains(groups, gid)
}

// callerGroups reads the supplementary groups of thread pid.
func callerGroups(pid uint32) ([]uint32, bool) {
	if pid == 0 {
		return nil, false
	}
	status, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/status")
	if err != nil {
		return nil, false
	}
	return statusGroups(status), true
}

// statusGroups parses the Groups line of a /proc/PID/status file.
func statusGroups(status []byte) []uint32 {
	var groups []uint32
	for line := range bytes.Lines(status) {
		rest, ok := bytes.CutPrefix(line, []byte("Groups:"))
		if !ok {
			continue
		}
		for _, f := range bytes.Fields(rest) {
			if g, err := strconv.ParseUint(string(f), 10, 32); err == nil {
				groups = append(groups, uint32(g))
			}
		}
		break
	}
	return groups
}
