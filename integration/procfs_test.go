package integration

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// mountInfo is one line of /proc/self/mountinfo, the fields we use.
type mountInfo struct {
	dev        string // "major:minor" of the mounted filesystem
	mountPoint string
	fsType     string
	source     string
}

// readMountInfo parses /proc/self/mountinfo in order (parents before
// children).
func readMountInfo() []mountInfo {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		panic(err)
	}
	var out []mountInfo
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		out = append(out, mountInfo{
			dev:        fields[2],
			mountPoint: unescapeMountInfo(fields[4]),
			fsType:     fields[sep+1],
			source:     unescapeMountInfo(fields[sep+2]),
		})
	}
	return out
}

// unescapeMountInfo undoes the kernel's octal escapes (\040 for space...).
func unescapeMountInfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountsUnder lists the mount points at or below dir, outermost first.
func mountsUnder(dir string) []string {
	dir = filepath.Clean(dir)
	var out []string
	for _, mi := range readMountInfo() {
		if mi.mountPoint == dir || strings.HasPrefix(mi.mountPoint, dir+"/") {
			out = append(out, mi.mountPoint)
		}
	}
	return out
}

// mountAt returns the topmost mount whose mount point is exactly dir.
func mountAt(dir string) (mountInfo, bool) {
	dir = filepath.Clean(dir)
	var found mountInfo
	ok := false
	for _, mi := range readMountInfo() {
		if mi.mountPoint == dir {
			found, ok = mi, true
		}
	}
	return found, ok
}

// processesMentioning lists the pids (other than this process) whose
// command line has an argument containing s. Daemons of the mounts this
// package makes all carry their mount point on the command line.
func processesMentioning(s string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		panic(err)
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if strings.Contains(processCmdline(pid), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// processCmdline is the command line of pid with arguments joined by
// spaces, or "" if the process is gone.
func processCmdline(pid int) string {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(strings.ReplaceAll(string(data), "\x00", " "))
}
