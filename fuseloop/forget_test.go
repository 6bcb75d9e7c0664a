package fuseloop

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// forgetFS gives every name in the root a node id of its own and counts
// the lookups the kernel forgets.
type forgetFS struct {
	fuse.RawFileSystem
	mu     sync.Mutex
	ids    map[string]uint64
	forgot atomic.Int64 // lookup references forgotten
}

func (f *forgetFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if h.NodeId != fuse.FUSE_ROOT_ID {
		return fuse.ENOENT
	}
	f.mu.Lock()
	id, ok := f.ids[name]
	if !ok {
		id = uint64(len(f.ids)) + 2
		f.ids[name] = id
	}
	f.mu.Unlock()
	out.NodeId, out.Attr.Ino = id, id
	out.Attr.Mode = syscall.S_IFREG | 0o644
	out.Attr.Nlink = 1
	out.SetEntryTimeout(time.Hour)
	out.SetAttrTimeout(time.Hour)
	return fuse.OK
}

func (f *forgetFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	out.Ino, out.Nlink, out.Mode = in.NodeId, 1, syscall.S_IFREG|0o644
	if in.NodeId == fuse.FUSE_ROOT_ID {
		out.Mode, out.Nlink = syscall.S_IFDIR|0o755, 2
	}
	return fuse.OK
}

func (f *forgetFS) Forget(nodeID, nlookup uint64) { f.forgot.Add(int64(nlookup)) }

// Every lookup the kernel drops reaches the filesystem as a forget, on
// both transports: names dropped one at a time (a trickle, as rm -rf
// makes, after which the /dev/fuse reader of a ring mount pauses) and
// all at once. Nothing here is timed; the bound only turns a forget that
// never arrives into a failure.
func TestEveryForgetArrives(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting with mount(2) needs root")
	}
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			if tr.uring {
				requireUring(t)
			}
			fs := &forgetFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), ids: map[string]uint64{}}
			mnt := t.TempDir()
			m, err := Mount(fs, mnt, fuse.MountOptions{Name: "fuseloop-test", MaxWrite: 128 << 10}, Options{Uring: tr.uring})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := m.Unmount(); err != nil {
					t.Errorf("unmount: %v", err)
					unix.Unmount(mnt, unix.MNT_DETACH)
				}
			})
			const names = 600
			lookAll := func(round int) {
				for i := range names {
					var st unix.Stat_t
					if err := unix.Lstat(filepath.Join(mnt, fmt.Sprintf("r%d-%d", round, i)), &st); err != nil {
						t.Fatal(err)
					}
				}
			}
			waitForgot := func(want int64) {
				t.Helper()
				for deadline := time.Now().Add(30 * time.Second); fs.forgot.Load() < want; time.Sleep(5 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("%d of %d lookups forgotten", fs.forgot.Load(), want)
					}
				}
			}
			// One at a time.
			lookAll(0)
			for i := range names {
				if st := m.Server.EntryNotify(fuse.FUSE_ROOT_ID, fmt.Sprintf("r0-%d", i)); !st.Ok() {
					t.Fatalf("entry notify: %v", st)
				}
			}
			waitForgot(names)
			// All at once, from two goroutines.
			lookAll(1)
			var wg sync.WaitGroup
			for half := range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := half; i < names; i += 2 {
						m.Server.EntryNotify(fuse.FUSE_ROOT_ID, fmt.Sprintf("r1-%d", i))
					}
				}()
			}
			wg.Wait()
			waitForgot(2 * names)
			if tr.uring && m.RingRequests() == 0 {
				t.Error("no request came through the rings")
			}
		})
	}
}
