package integration

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A process waiting for a lock must not stop the mount: strata reads
// requests on one thread while they are quick, so a request that waits
// (here a blocking flock and a blocking OFD lock) has to hand reading to
// another thread first. Checked on kernel overlayfs too, which shows the
// test itself is sound.
func TestLockWaitersDoNotStopTheMount(t *testing.T) {
	dir := t.TempDir()
	lower := filepath.Join(dir, "lower")
	if err := os.MkdirAll(filepath.Join(lower, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"lock", "d/other"} {
		if err := os.WriteFile(filepath.Join(lower, name), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := mountPair(t, dir, []string{lower}, []string{lower}, false, nil)
	for _, v := range []*view{p.oracle, p.sut} {
		t.Run(v.target.name(), func(t *testing.T) {
			v.guarded("a mount with lock waiters", func() { checkLockWaiters(t, v.mnt) })
			if v.hung != "" {
				t.Fatalf("hung during %s", v.hung)
			}
		})
	}
}

// lockWaiter starts a blocking lock on fd and returns a channel that gets
// its result once it is granted.
func lockWaiter(lock func() error) <-chan error {
	done := make(chan error, 1)
	go func() { done <- lock() }()
	return done
}

func checkLockWaiters(t *testing.T, mnt string) {
	path := filepath.Join(mnt, "lock")
	open := func() int {
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	holder, flockWaiter, ofdWaiter := open(), open(), open()
	if err := unix.Flock(holder, unix.LOCK_EX); err != nil {
		t.Fatalf("flock holder: %v", err)
	}
	whole := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(uintptr(holder), unix.F_OFD_SETLK, &whole); err != nil {
		t.Fatalf("OFD lock holder: %v", err)
	}
	flockDone := lockWaiter(func() error { return unix.Flock(flockWaiter, unix.LOCK_EX) })
	ofdDone := lockWaiter(func() error {
		lk := unix.Flock_t{Type: unix.F_WRLCK}
		return unix.FcntlFlock(uintptr(ofdWaiter), unix.F_OFD_SETLKW, &lk)
	})

	// With both waiters parked, the mount keeps answering. (If a waiter
	// held the only reader, these would hang and the guard would fail
	// the test.)
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(mnt, "d", "other"), &st); err != nil {
		t.Fatalf("stat while locks wait: %v", err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "d", "new"), []byte("x"), 0o644); err != nil {
		t.Fatalf("create while locks wait: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "d", "other")); err != nil || string(got) != "d/other" {
		t.Fatalf("read while locks wait: %q, %v", got, err)
	}
	select {
	case err := <-flockDone:
		t.Fatalf("flock granted while another descriptor holds it (%v)", err)
	case err := <-ofdDone:
		t.Fatalf("OFD lock granted while another descriptor holds it (%v)", err)
	default:
	}

	// Releasing the holder's locks lets both waiters through.
	if err := unix.Flock(holder, unix.LOCK_UN); err != nil {
		t.Fatalf("flock unlock: %v", err)
	}
	if err := <-flockDone; err != nil {
		t.Fatalf("flock waiter: %v", err)
	}
	unlock := unix.Flock_t{Type: unix.F_UNLCK}
	if err := unix.FcntlFlock(uintptr(holder), unix.F_OFD_SETLK, &unlock); err != nil {
		t.Fatalf("OFD unlock: %v", err)
	}
	if err := <-ofdDone; err != nil {
		t.Fatalf("OFD waiter: %v", err)
	}
}
