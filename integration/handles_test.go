package integration

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Read-only handles of a file opened before are each an open file of
// their own, and keep reaching their file after it is renamed and
// removed: locks taken through one conflict with the other, and seeking,
// stat, chmod and fsync work through both. On strata such handles are
// opened lazily: their descriptor is opened on the first request that
// needs one, here after the rename and after the removal.
func TestReadOnlyHandlesOfAReopenedFileAreTheirOwn(t *testing.T) {
	p := mountPairOnEmptyLayer(t, "")
	for _, v := range []*view{p.oracle, p.sut} {
		t.Run(v.target.name(), func(t *testing.T) {
			v.guarded("using read-only handles", func() { checkOwnHandles(t, v) })
			if v.hung != "" {
				t.Fatalf("hung during %s", v.hung)
			}
		})
	}
}

func checkOwnHandles(t *testing.T, v *view) {
	path := filepath.Join(v.mnt, "kept")
	data := make([]byte, 3*4096)
	data[len(data)-1] = 'x'
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(path); err != nil { // strata keeps its backing file now
		t.Fatal(err)
	}
	a, b := openReadOnly(t, path), openReadOnly(t, path)

	if err := os.Rename(path, path+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(a, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatalf("flock through the first handle: %v", err)
	}
	if err := unix.Flock(b, unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
		t.Fatalf("flock through the second handle while the first holds it: %v, want EWOULDBLOCK", err)
	}
	if off, err := unix.Seek(a, 0, unix.SEEK_DATA); err != nil || off != 0 {
		t.Fatalf("SEEK_DATA: %d, %v", off, err)
	}

	if err := os.Remove(path + ".moved"); err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(a, unix.LOCK_UN); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	if err := unix.Flock(b, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatalf("flock through the second handle after the unlock: %v", err)
	}
	lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: 0, Len: 10}
	if err := unix.FcntlFlock(uintptr(a), unix.F_OFD_SETLK, &lk); err != nil {
		t.Fatalf("OFD read lock through the removed file's handle: %v", err)
	}
	if err := unix.Fchmod(b, 0o600); err != nil {
		t.Fatalf("fchmod of the removed file: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(a, &st); err != nil || st.Nlink != 0 || st.Size != int64(len(data)) || st.Mode&0o777 != 0o600 {
		t.Fatalf("fstat of the removed file: %v nlink=%d size=%d mode=%o", err, st.Nlink, st.Size, st.Mode&0o777)
	}
	if err := unix.Fsync(b); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	buf := make([]byte, 1)
	if n, err := unix.Pread(b, buf, int64(len(data)-1)); err != nil || n != 1 || buf[0] != 'x' {
		t.Fatalf("read of the removed file: %d %q %v", n, buf, err)
	}
}

func openReadOnly(t *testing.T, path string) int {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}
