package fs

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A listing keeps the attributes of its topmost directory as the scan
// left them, and gives them only for that layer.
func TestListingKeepsTopDirAttr(t *testing.T) {
	top, bottom := t.TempDir(), t.TempDir()
	writeTree(t, top, "d/a", "d/b")
	writeTree(t, bottom, "d/c")
	dir := filepath.Join(top, "d")
	if err := os.Chmod(dir, 0o751); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 1234, 5678); err != nil {
		t.Fatal(err)
	}
	old := time.Date(1950, 3, 4, 5, 6, 7, 891, time.UTC) // before the epoch
	if err := os.Chtimes(dir, old, old); err != nil {
		t.Fatal(err)
	}
	u, err := newUnion(Config{Lowers: []string{top, bottom}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.close)
	ll, _, err := u.buildLowerListing(lowerDirSet{rel: "d", layers: []int{0, 1}})
	if err != nil {
		t.Fatal(err)
	}
	var want, got unix.Stat_t
	if err := unix.Lstat(dir, &want); err != nil {
		t.Fatal(err)
	}
	if !ll.top.statOf(0, &got) {
		t.Fatal("the listing keeps no attributes of the top directory")
	}
	want.Dev, want.Ino, want.Rdev = 0, 0, 0 // the node shows its own
	if got != want {
		t.Errorf("kept attributes\n%+v\nwant\n%+v", got, want)
	}
	if ll.top.statOf(1, &got) {
		t.Error("the listing gives the top directory's attributes for the layer below")
	}
}

// When the first layer of the set has no such directory, nothing is kept:
// the directory the node stands for is another one.
func TestListingKeepsNoAttrForMissingTop(t *testing.T) {
	top, bottom := t.TempDir(), t.TempDir()
	writeTree(t, top, "other")
	writeTree(t, bottom, "d/c")
	u, err := newUnion(Config{Lowers: []string{top, bottom}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.close)
	ll, used, err := u.buildLowerListing(lowerDirSet{rel: "d", layers: []int{0, 1}})
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if len(used) != 1 || ll.top.statOf(0, &st) || ll.top.statOf(1, &st) {
		t.Errorf("used %v, kept %+v; want layer 1 only and nothing kept", used, ll.top)
	}
}

// Times that nanoseconds in an int64 cannot hold, and a link count that
// 32 bits cannot, are not kept, so such a directory is stat'ed each time
// rather than shown wrong.
func TestDirAttrRefusesValuesOutOfRange(t *testing.T) {
	st := unix.Stat_t{Mode: unix.S_IFDIR | 0o755, Nlink: 2}
	st.Mtim = unix.Timespec{Sec: 1 << 40} // year 34,000
	var got unix.Stat_t
	if a := newDirAttr(0, &st); a.statOf(0, &got) {
		t.Errorf("mtime %d s kept as %+v", st.Mtim.Sec, got.Mtim)
	}
	st.Mtim = unix.Timespec{Sec: 253402300799, Nsec: 999999999} // 9999-12-31
	if a := newDirAttr(0, &st); a.statOf(0, &got) {
		t.Errorf("mtime %d s kept as %+v", st.Mtim.Sec, got.Mtim)
	}
	st.Mtim = unix.Timespec{Sec: 4102444800, Nsec: 7} // 2100-01-01
	if a := newDirAttr(3, &st); !a.statOf(3, &got) || got.Mtim != st.Mtim {
		t.Errorf("mtime %+v not kept as it is: %+v", st.Mtim, got.Mtim)
	}
	st.Nlink = 1 << 32
	if a := newDirAttr(3, &st); a.statOf(3, &got) {
		t.Errorf("nlink %d kept as %d", st.Nlink, got.Nlink)
	}
}

// The zero value, the listing of a directory with no lower part, keeps
// nothing.
func TestZeroDirAttrKeepsNothing(t *testing.T) {
	var a dirAttr
	var st unix.Stat_t
	if a.statOf(0, &st) {
		t.Error("the zero dirAttr gives attributes for layer 0")
	}
}
