package fuseloop

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	syncing atomic.Int32 // fsyncs waiting for release
}

// Open opens any file; Fsync waits until release is closed.
func (f *stallingFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.OK
}

func (f *stallingFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	f.syncing.Add(1)
	<-f.release
	return fuse.OK
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

// transports are the two ways requests reach the loop.
var transports = []struct {
	name  string
	uring bool
}{{"devfuse", false}, {"uring", true}}

// requireUring turns FUSE over io_uring on in the kernel (the fuse
// module's enable_uring parameter, which only affects mounts that ask for
// it) for the test, and off again after it if it was off. It fails the
// test where the kernel cannot: strata's tests run on kernels that have
// it.
func requireUring(t *testing.T) {
	t.Helper()
	if UringEnabled() {
		return
	}
	const param = "/sys/module/fuse/parameters/enable_uring"
	if err := os.WriteFile(param, []byte("Y"), 0); err != nil {
		t.Fatalf("enabling FUSE over io_uring: %v", err)
	}
	// Registered before the mount's cleanup, so it runs after the unmount.
	t.Cleanup(func() { os.WriteFile(param, []byte("N"), 0) })
}

func mountStalling(t *testing.T, uring bool) (*stallingFS, string, *Mounted) {
	t.Helper()
	return mountStallingWith(t, Options{Uring: uring})
}

func mountStallingWith(t *testing.T, opts Options) (*stallingFS, string, *Mounted) {
	t.Helper()
	uring := opts.Uring
	if os.Geteuid() != 0 {
		t.Skip("mounting with mount(2) needs root")
	}
	if uring {
		requireUring(t)
	}
	fs := &stallingFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), stalled: make(chan struct{}), release: make(chan struct{})}
	mnt := t.TempDir()
	m, err := Mount(fs, mnt, fuse.MountOptions{Name: "fuseloop-test", MaxWrite: 128 << 10}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if m.Uring() != uring {
		t.Fatalf("mounted with io_uring %v, want %v", m.Uring(), uring)
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

// onCPU runs fn on a thread pinned to cpu, so that with io_uring its
// requests all arrive on that CPU's queue.
func onCPU(t *testing.T, cpu int, fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread stays locked, so that it ends with the goroutine
		// instead of serving others on one CPU.
		runtime.LockOSThread()
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			t.Errorf("pinning to CPU %d: %v", cpu, err)
			return
		}
		fn()
	}()
	<-done
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
// reading to another goroutine. The requests are made on one CPU, so that
// with io_uring they arrive on the same queue.
func TestStalledRequestDoesNotBlockOthers(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			fs, mnt, _ := mountStalling(t, tr.uring)
			requireStallDoesNotBlock(t, fs, mnt)
		})
	}
}

// On an idle mount the stall guard sleeps; the stalling request's arrival
// must wake it.
func TestStallGuardWakesOnRequestAfterIdle(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			fs, mnt, m := mountStalling(t, tr.uring)
			// The bound only turns a hang into a failure; nothing is timed.
			for deadline := time.Now().Add(30 * time.Second); !m.loop.guardAsleep.Load(); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the stall guard of an idle mount never went to sleep")
				}
			}
			// Asleep, the guard left the reapers (ReaperAuto) in the
			// normal class, so a request on a busy machine is not
			// starved.
			if n := threadsWithPolicy(t, schedIdle); n != 0 {
				t.Errorf("%d SCHED_IDLE threads while the mount is idle", n)
			}
			requireStallDoesNotBlock(t, fs, mnt)
		})
	}
}

// requireStallDoesNotBlock stalls a lookup and requires two more lookups,
// made on the same CPU, to be answered meanwhile.
func requireStallDoesNotBlock(t *testing.T, fs *stallingFS, mnt string) {
	t.Helper()
	stuck := failIfStuck(t, fs, 30*time.Second)
	stalledDone := make(chan error, 1)
	go onCPU(t, 0, func() {
		var st unix.Stat_t
		stalledDone <- unix.Lstat(filepath.Join(mnt, "stall"), &st)
	})
	<-fs.stalled

	onCPU(t, 0, func() {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(mnt, "quick"), &st); err != nil {
			t.Errorf("lstat while another lookup stalls: %v", err)
		} else if st.Size != int64(len("quick")) {
			t.Errorf("size %d, want %d", st.Size, len("quick"))
		}
		if err := unix.Lstat(filepath.Join(mnt, "missing1"), &st); err != unix.ENOENT {
			t.Errorf("lstat of a missing name: %v, want ENOENT", err)
		}
	})
	if stuck.Stop() {
		close(fs.release)
	}
	if err := <-stalledDone; err != nil {
		t.Errorf("stalled lstat: %v", err)
	}
}

// Requests that wait (fsync here) each hold a ring entry; more of them
// than a queue starts with must not starve the requests behind them.
func TestWaitingRequestsDoNotStarveTheQueue(t *testing.T) {
	fs, mnt, m := mountStalling(t, true)
	stuck := failIfStuck(t, fs, 30*time.Second)
	const waiters = ringInitialEntries + ringSpareEntries
	var wg sync.WaitGroup
	for i := 0; i < waiters; i++ {
		wg.Add(1)
		// fsync holds the inode's lock: one file each (Lookup numbers
		// files by name length).
		name := strings.Repeat("w", i+1)
		go func() {
			defer wg.Done()
			onCPU(t, 0, func() {
				// Not os.Open: the runtime's poller would register the
				// descriptor with epoll_ctl, which asks this very
				// process (FUSE_POLL) while it holds a P.
				fd, err := unix.Open(filepath.Join(mnt, name), unix.O_RDONLY, 0)
				if err != nil {
					t.Error(err)
					return
				}
				defer unix.Close(fd)
				if err := unix.Fsync(fd); err != nil {
					t.Errorf("fsync: %v", err)
				}
			})
		}()
	}
	for fs.syncing.Load() < waiters {
		time.Sleep(time.Millisecond)
	}
	onCPU(t, 0, func() {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(mnt, "other"), &st); err != nil {
			t.Errorf("lstat while %d fsyncs wait: %v", waiters, err)
		}
	})
	if stuck.Stop() {
		close(fs.release)
	}
	wg.Wait()
	if m.RingRequests() == 0 {
		t.Error("no request came through the ring")
	}
}

// Unmount ends the loop: Wait returns and the kernel has no mount left.
func TestUnmountEndsTheLoop(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			_, mnt, m := mountStalling(t, tr.uring)
			for i := 0; i < 100; i++ {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(mnt, "f"+strings.Repeat("x", i%7)), &st); err != nil {
					t.Fatal(err)
				}
			}
			if tr.uring && m.RingRequests() == 0 {
				t.Error("no request came through the ring")
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
		})
	}
}

// Ring reapers run in the scheduling class asked for, and requests are
// answered either way. (ReaperAuto starts idle and follows the load: its
// choice is spareCPU's, tested on its own.)
func TestReaperSchedulingClass(t *testing.T) {
	for _, tc := range []struct {
		name  string
		class ReaperClass
		idle  bool
	}{{"idle", ReaperIdle, true}, {"normal", ReaperNormal, false}} {
		t.Run(tc.name, func(t *testing.T) {
			// Reapers of earlier mounts may still be ending.
			for deadline := time.Now().Add(30 * time.Second); threadsWithPolicy(t, schedIdle) > 0; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("SCHED_IDLE threads of earlier mounts never ended")
				}
			}
			_, mnt, m := mountStallingWith(t, Options{Uring: true, ReaperClass: tc.class})
			for cpu := range runtime.NumCPU() {
				onCPU(t, cpu, func() {
					var st unix.Stat_t
					if err := unix.Lstat(filepath.Join(mnt, "quick"), &st); err != nil {
						t.Errorf("lstat on CPU %d: %v", cpu, err)
					}
				})
			}
			if m.RingRequests() == 0 {
				t.Fatal("no request came through a ring")
			}
			idle := threadsWithPolicy(t, schedIdle)
			queues := len(m.loop.rings.queues)
			switch {
			case tc.idle && idle < queues:
				t.Errorf("%d SCHED_IDLE threads, want one reaper for each of %d queues", idle, queues)
			case !tc.idle && idle != 0:
				t.Errorf("%d SCHED_IDLE threads with normal-class reapers", idle)
			}
		})
	}
}

func TestSpareCPU(t *testing.T) {
	for _, tc := range []struct {
		idle, total uint64
		ncpu        int
		want        bool
	}{
		{0, 0, 2, true},     // no time passed
		{100, 200, 2, true}, // one of two CPUs idle
		{20, 200, 2, false}, // a fifth of one CPU of two
		{25, 200, 2, true},  // exactly a quarter of one CPU
		{0, 200, 2, false},  // all busy
		{10, 800, 8, false}, // 8 CPUs, a tenth of one idle
		{100, 800, 8, true}, // 8 CPUs, one idle
		{30, 100, 1, true},  // one CPU, 30% idle
		{20, 100, 1, false}, // one CPU, 20% idle
	} {
		before := cpuTimes{idle: 1000, total: 5000, cpus: tc.ncpu}
		after := cpuTimes{idle: before.idle + tc.idle, total: before.total + tc.total, cpus: tc.ncpu}
		if got := spareCPU(before, after); got != tc.want {
			t.Errorf("idle %d of %d on %d CPUs: spare %v, want %v", tc.idle, tc.total, tc.ncpu, got, tc.want)
		}
	}
}

func TestReadCPUTimes(t *testing.T) {
	a, err := readCPUTimes()
	if err != nil {
		t.Fatal(err)
	}
	// Burn some CPU so that the counters move.
	for deadline := time.Now().Add(50 * time.Millisecond); time.Now().Before(deadline); {
	}
	b, err := readCPUTimes()
	if err != nil {
		t.Fatal(err)
	}
	if a.total == 0 || a.idle > a.total || b.total <= a.total || b.idle < a.idle {
		t.Errorf("CPU times %+v then %+v", a, b)
	}
	// The CPUs this process may run on are online.
	if a.cpus < runtime.NumCPU() {
		t.Errorf("%d online CPUs counted, fewer than the %d this process may use", a.cpus, runtime.NumCPU())
	}
}

// threadsWithPolicy counts this process's threads in scheduling policy p
// (field 41 of /proc/self/task/TID/stat).
func threadsWithPolicy(t *testing.T, p int) int {
	t.Helper()
	stats, err := filepath.Glob("/proc/self/task/*/stat")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // the thread ended
		}
		// Fields after the command name, which is in parentheses and may
		// hold spaces; policy is field 41, the 39th after ")".
		rest := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(rest) > 38 && rest[38] == strconv.Itoa(p) {
			n++
		}
	}
	return n
}
