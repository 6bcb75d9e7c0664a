package fuseloop

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// stallingFS answers lookups of any name with a regular file, except that a
// lookup of "stall" waits until release is closed.
type stallingFS struct {
	fuse.RawFileSystem
	stalled chan struct{} // closed when the stalling lookup has arrived
	release chan struct{}
	once    sync.Once
}

func (f *stallingFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if name == "stall" {
		f.once.Do(func() { close(f.stalled) })
		<-f.release
	}
	if h.NodeId != fuse.FUSE_ROOT_ID || strings.HasPrefix(name, "missing") {
		return fuse.ENOENT
	}
	out.NodeId = 2 + uint64(len(name))
	out.Attr.Ino = out.NodeId
	out.Attr.Mode = syscall.S_IFREG | 0o644
	out.Attr.Nlink = 1
	out.Attr.Size = uint64(len(name))
	return fuse.OK
}

func (f *stallingFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	out.Ino = in.NodeId
	out.Nlink = 1
	out.Mode = syscall.S_IFREG | 0o644
	out.Size = in.NodeId - 2 // as Lookup numbers them
	if in.NodeId == fuse.FUSE_ROOT_ID {
		out.Size = 0
		out.Mode = syscall.S_IFDIR | 0o755
		out.Nlink = 2
	}
	return fuse.OK
}

func mountStalling(t *testing.T) (*stallingFS, string, *Mounted) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting with mount(2) needs root")
	}
	fs := &stallingFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), stalled: make(chan struct{}), release: make(chan struct{})}
	mnt := t.TempDir()
	m, err := Mount(fs, mnt, fuse.MountOptions{Name: "fuseloop-test", MaxWrite: 128 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		fs.once.Do(func() { close(fs.stalled) })
		select {
		case <-fs.release:
		default:
			close(fs.release)
		}
		if err := m.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	return fs, mnt, m
}

// failIfStuck fails the test if the stalled lookup is still holding up
// the others after d, and then releases it, so that a failure shows as an
// error instead of a stuck test run.
func failIfStuck(t *testing.T, fs *stallingFS, d time.Duration) *time.Timer {
	return time.AfterFunc(d, func() {
		t.Errorf("requests still blocked behind the stalled one after %v", d)
		close(fs.release)
	})
}

// A request that stalls must not hold up the others: the stall guard hands
// reading to another goroutine.
func TestStalledRequestDoesNotBlockOthers(t *testing.T) {
	fs, mnt, _ := mountStalling(t)
	stuck := failIfStuck(t, fs, 30*time.Second)

	stalledDone := make(chan error, 1)
	go func() {
		var st unix.Stat_t
		stalledDone <- unix.Lstat(filepath.Join(mnt, "stall"), &st)
	}()
	<-fs.stalled

	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(mnt, "quick"), &st); err != nil {
		t.Fatalf("lstat while another lookup stalls: %v", err)
	}
	if st.Size != int64(len("quick")) {
		t.Errorf("size %d, want %d", st.Size, len("quick"))
	}
	if err := unix.Lstat(filepath.Join(mnt, "missing1"), &st); err != unix.ENOENT {
		t.Errorf("lstat of a missing name: %v, want ENOENT", err)
	}
	if stuck.Stop() {
		close(fs.release)
	}
	if err := <-stalledDone; err != nil {
		t.Errorf("stalled lstat: %v", err)
	}
}

// Unmount ends the loop: Wait returns and the kernel has no mount left.
func TestUnmountEndsTheLoop(t *testing.T) {
	_, mnt, m := mountStalling(t)
	for i := 0; i < 100; i++ {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(mnt, "f"+strings.Repeat("x", i%7)), &st); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	m.Wait()
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), " "+mnt+" ") {
		t.Errorf("%s still mounted after Unmount", mnt)
	}
	if err := m.Unmount(); err != nil {
		t.Errorf("second Unmount: %v", err)
	}
}
