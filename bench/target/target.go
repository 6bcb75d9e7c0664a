// Package target mounts a stack of layer directories with one of the union
// filesystems strata is measured against, and takes the mount down again.
//
// Kinds: kernel overlayfs (mounted through the fsopen/fsconfig API with one
// "lowerdir+" call per layer, so the page-size limit of the lowerdir= option
// string does not apply), fuse-overlayfs, and strata (through its binary:
// "strata mount --lower TOP ... --upper U --work W MNT", first --lower is
// the topmost). A FUSE mount also reports the pid of its daemon, so callers
// can read its peak memory.
//
// Every Mount must be undone with Unmount; Registry keeps track of live
// mounts so a program can take them all down on an error or a signal.
package target

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Kind names a union filesystem implementation.
type Kind string

// The implementations under comparison.
const (
	Overlayfs     Kind = "overlayfs"
	FuseOverlayfs Kind = "fuse-overlayfs"
	Strata        Kind = "strata"
)

// Spec says what to mount where.
type Spec struct {
	// Lowers are the read-only layers, topmost first.
	Lowers []string
	// Upper and Work are the writable layer and the scratch directory
	// beside it, on the same filesystem; both must exist and be empty.
	Upper, Work string
	// Dir is the (existing) mountpoint.
	Dir string
}

// Binaries says where the FUSE implementations' programs are.
type Binaries struct {
	FuseOverlayfs string
	Strata        string
}

// Mount is a live union mount.
type Mount struct {
	Kind Kind
	Dir  string
	// DaemonPID is the FUSE daemon's pid, 0 for kernel overlayfs or when it
	// could not be found.
	DaemonPID int

	unmount  func() error
	once     sync.Once
	err      error
	registry *Registry
}

// ErrCannotMount wraps every failure to bring a mount up.
var ErrCannotMount = errors.New("cannot mount")

// New mounts spec with the given implementation and registers the mount in
// reg (which may be nil).
func New(kind Kind, spec Spec, bins Binaries, reg *Registry) (*Mount, error) {
	var (
		m   *Mount
		err error
	)
	if spec, err = absolute(spec); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCannotMount, err)
	}
	switch kind {
	case Overlayfs:
		m, err = mountOverlay(spec)
	case FuseOverlayfs:
		m, err = mountFuseOverlayfs(bins.FuseOverlayfs, spec)
	case Strata:
		m, err = mountStrata(bins.Strata, spec)
	default:
		return nil, fmt.Errorf("%w: unknown kind %q", ErrCannotMount, kind)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s with %d layers: %w", ErrCannotMount, kind, len(spec.Lowers), err)
	}
	m.Kind = kind
	m.Dir = spec.Dir
	if reg != nil {
		reg.add(m)
		m.registry = reg
	}
	return m, nil
}

// Unmount takes the mount down and, for FUSE, waits for the daemon to exit.
// It is safe to call more than once.
func (m *Mount) Unmount() error {
	m.once.Do(func() {
		m.err = m.unmount()
		if m.registry != nil {
			m.registry.remove(m)
		}
	})
	return m.err
}

// PeakRSS is the daemon's peak resident set size (VmHWM) in bytes.
func (m *Mount) PeakRSS() (int64, error) { return m.daemonMemory("VmHWM") }

// RSS is the daemon's resident set size now (VmRSS) in bytes.
func (m *Mount) RSS() (int64, error) { return m.daemonMemory("VmRSS") }

func (m *Mount) daemonMemory(field string) (int64, error) {
	if m.DaemonPID == 0 {
		return 0, fmt.Errorf("%s at %s: no daemon process known", m.Kind, m.Dir)
	}
	return statusBytes(m.DaemonPID, field)
}

// statusBytes reads a "Field: N kB" line of /proc/PID/status.
func statusBytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", field, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, field+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: parse %q: %w", field, line, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("no %s line for pid %d", field, pid)
}

// Registry remembers live mounts so they can all be taken down at once.
type Registry struct {
	mu     sync.Mutex
	mounts map[*Mount]struct{}
}

func (r *Registry) add(m *Mount) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mounts == nil {
		r.mounts = map[*Mount]struct{}{}
	}
	r.mounts[m] = struct{}{}
}

func (r *Registry) remove(m *Mount) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.mounts, m)
}

// UnmountAll takes down every mount still registered.
func (r *Registry) UnmountAll() error {
	r.mu.Lock()
	live := make([]*Mount, 0, len(r.mounts))
	for m := range r.mounts {
		live = append(live, m)
	}
	r.mu.Unlock()
	var errs []error
	for _, m := range live {
		errs = append(errs, m.Unmount())
	}
	return errors.Join(errs...)
}

// absolute makes every path of spec absolute: daemons resolve paths after
// changing directory, and the mount table lists absolute paths.
func absolute(spec Spec) (Spec, error) {
	var err error
	abs := func(p string) string {
		if p == "" || err != nil {
			return p
		}
		var a string
		a, err = filepath.Abs(p)
		return a
	}
	out := Spec{Upper: abs(spec.Upper), Work: abs(spec.Work), Dir: abs(spec.Dir)}
	for _, l := range spec.Lowers {
		out.Lowers = append(out.Lowers, abs(l))
	}
	if err != nil {
		return spec, fmt.Errorf("absolute path: %w", err)
	}
	return out, nil
}

// UnmountStale unmounts every mount at or below root, deepest first: what a
// killed earlier run may have left behind.
func UnmountStale(root string) error {
	root, err := filepath.Abs(root)
	if err != nil {
		return fmt.Errorf("stale mounts: %w", err)
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("stale mounts: %w", err)
	}
	var dirs []string
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		dir := unescapeMountinfo(fields[4])
		if dir == root || strings.HasPrefix(dir, root+"/") {
			dirs = append(dirs, dir)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	var errs []error
	for _, d := range dirs {
		errs = append(errs, unmountDir(d))
	}
	return errors.Join(errs...)
}

// DropCaches writes dirty data back and empties the page, dentry and inode
// caches, so the next access is cold. Needs root.
func DropCaches() error {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("drop caches: %w", err)
	}
	return nil
}
