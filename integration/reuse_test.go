package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A removed (or replaced) file the kernel still holds (here through an O_PATH descriptor,
// which makes the daemon open nothing) must stay a different inode from a
// file made after it, even when the upper filesystem gives the new file the
// removed one's inode number, as ext4 does at once. Strata once handed the
// new name the removed file's node, so the held descriptor showed the new
// file's attributes, and stale state of the old node (its lower file, its
// cached descriptors) could serve the new name. Checked on kernel overlayfs
// too, which keeps the upper inode pinned and so never sees the number
// again.
func TestNewFileReusingARemovedInodeNumberIsANewInode(t *testing.T) {
	p := mountPairOnEmptyLayer(t, "")
	for _, v := range []*view{p.oracle, p.sut} {
		t.Run(v.target.name(), func(t *testing.T) {
			reused := 0
			v.guarded("removing and making files", func() { reused = removeAndRemake(t, v, 8) })
			if v.hung != "" {
				t.Fatalf("hung during %s", v.hung)
			}
			if v == p.sut && reused == 0 {
				t.Fatalf("the upper layer never reused an inode number, so nothing was checked")
			}
		})
	}
}

// mountPairOnEmptyLayer mounts the oracle and strata over one lower layer
// that holds only the directory subdir (none if "").
func mountPairOnEmptyLayer(t *testing.T, subdir string) *pair {
	t.Helper()
	dir := t.TempDir()
	lower := filepath.Join(dir, "lower")
	if err := os.MkdirAll(filepath.Join(lower, subdir), 0o755); err != nil {
		t.Fatal(err)
	}
	return mountPair(t, dir, []string{lower}, []string{lower}, false, nil)
}

// mountPairOverLowerFile mounts both targets over one lower layer that
// holds the file rel with content: its first open through the mount is on
// the lower file.
func mountPairOverLowerFile(t *testing.T, rel, content string) *pair {
	t.Helper()
	dir := t.TempDir()
	lower := filepath.Join(dir, "lower")
	if err := os.MkdirAll(filepath.Dir(filepath.Join(lower, rel)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lower, rel), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return mountPair(t, dir, []string{lower}, []string{lower}, false, nil)
}

// sameOnBoth runs do on the oracle and then on strata and fails the test
// when what they report differs.
func sameOnBoth(t *testing.T, p *pair, what string, do func(mnt string) string) {
	t.Helper()
	results := map[string]string{}
	for _, v := range []*view{p.oracle, p.sut} {
		v.guarded(what, func() { results[v.target.name()] = do(v.mnt) })
		if v.hung != "" {
			t.Fatalf("%s hung during %s", v.target.name(), v.hung)
		}
	}
	if results[p.oracle.target.name()] != results[p.sut.target.name()] {
		t.Fatalf("%s\noracle: %s\nsut:    %s", what, results[p.oracle.target.name()], results[p.sut.target.name()])
	}
}

// removeAndRemake removes a held file and makes another, rounds times, and
// checks each pair: the file is unlinked, or replaced by a rename. It
// returns how often the upper layer reused the
// removed file's inode number.
func removeAndRemake(t *testing.T, v *view, rounds int) (reused int) {
	for i := range rounds {
		old, fresh := filepath.Join(v.mnt, fmt.Sprintf("old%d", i)), filepath.Join(v.mnt, fmt.Sprintf("new%d", i))
		if err := os.WriteFile(old, []byte("old"), 0o644); err != nil {
			t.Fatal(err)
		}
		oldUpperIno := upperIno(t, v, old)
		held, err := unix.Open(old, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(held)
		// Even rounds unlink the file, odd ones rename another over it.
		if i%2 == 0 {
			if err := os.Remove(old); err != nil {
				t.Fatal(err)
			}
		} else {
			spare := old + ".spare"
			if err := os.WriteFile(spare, []byte("spare"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(spare, old); err != nil {
				t.Fatal(err)
			}
		}
		// Strata lets go of a removed file it kept open a few
		// milliseconds after the removal, and at once on a statfs: only
		// then can the upper filesystem give its number out again.
		var fs unix.Statfs_t
		if err := unix.Statfs(v.mnt, &fs); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fresh, []byte("fresher"), 0o600); err != nil {
			t.Fatal(err)
		}
		if upperIno(t, v, fresh) == oldUpperIno {
			reused++
		}
		var st unix.Stat_t
		if err := unix.Stat(fresh, &st); err != nil || st.Size != 7 || st.Nlink != 1 || st.Mode&0o777 != 0o600 {
			t.Fatalf("round %d: stat of the new file: %v size=%d nlink=%d mode=%o", i, err, st.Size, st.Nlink, st.Mode)
		}
		if got, err := os.ReadFile(fresh); err != nil || string(got) != "fresher" {
			t.Fatalf("round %d: read of the new file: %q, %v", i, got, err)
		}
		// The held file is gone: it shows its last attributes with no
		// link, never the new file's.
		if err := unix.Fstat(held, &st); err != nil || st.Nlink != 0 || st.Size != 3 || st.Mode&0o777 != 0o644 {
			t.Fatalf("round %d: the removed file: %v nlink=%d size=%d mode=%o", i, err, st.Nlink, st.Size, st.Mode)
		}
	}
	return reused
}

// upperIno is the inode number of the upper entry behind a path of the
// view.
func upperIno(t *testing.T, v *view, path string) uint64 {
	rel, err := filepath.Rel(v.mnt, path)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(v.dirs.upper, rel), &st); err != nil {
		t.Fatalf("upper entry of %s: %v", rel, err)
	}
	return st.Ino
}

// A node the kernel still holds after strata superseded it must keep
// following its object when the successor is renamed. Here a lower file
// open for reading (passed through to the lower file) gets a second name,
// which copies it up, and is then opened for writing: the writer's handle
// is on the upper copy, so the file gets a second kernel inode, and a stat
// or open through the second name, which the kernel cached, still reaches
// the superseded one.
func TestSupersededNodeFollowsItsObject(t *testing.T) {
	p := mountPairOverLowerFile(t, "h/a", "old")
	sameOnBoth(t, p, "writing, renaming and reading hard links", func(mnt string) string { return renameSupersededLink(t, mnt) })
}

// renameSupersededLink links the lower file h/a to h/b and writes it while
// a read-only handle is open, renames it, and reports what h/b shows.
func renameSupersededLink(t *testing.T, mnt string) string {
	a, b := filepath.Join(mnt, "h", "a"), filepath.Join(mnt, "h", "b")
	reader, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	if err := os.Link(a, b); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(b, &st); err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(a, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("newer")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := os.Rename(a, filepath.Join(mnt, "moved")); err != nil {
		t.Fatal(err)
	}
	statErr := unix.Stat(b, &st)
	content, readErr := os.ReadFile(b)
	return fmt.Sprintf("stat: %v mode=%o nlink=%d size=%d; read: %q %v", statErr, st.Mode, st.Nlink, st.Size, content, readErr)
}

// copy_file_range from a file to a later offset of itself, through two
// descriptors, grows the file with each call, and each call sees the size
// the last one left, on overlayfs as on any one filesystem. A setgid file
// tests it here: strata serves its writers itself (privileges drop as the
// writer), and its readers must then share their kernel inode, or the
// reader's inode keeps the size it saw first and the copies stop short.
func TestCopyFileRangeWithinAPrivilegedFile(t *testing.T) {
	p := mountPairOnEmptyLayer(t, "")
	sameOnBoth(t, p, "copy_file_range within a setgid file", func(mnt string) string { return copyWithinFile(t, mnt) })
}

// copyWithinFile copies up to 16 bytes of a one-byte setgid file onto
// itself, one byte further on each time, and reports how much was copied
// and what the file holds.
func copyWithinFile(t *testing.T, mnt string) string {
	a := filepath.Join(mnt, "a")
	if err := os.WriteFile(a, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(a, 0o2755); err != nil {
		t.Fatal(err)
	}
	src, err := unix.Open(a, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(src)
	dst, err := unix.Open(a, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dst)
	copied := 0
	inOff, outOff := int64(0), int64(1)
	for copied < 16 {
		n, err := unix.CopyFileRange(src, &inOff, dst, &outOff, 16-copied, 0)
		if err != nil {
			return fmt.Sprintf("copied %d, then %v", copied, err)
		}
		if n == 0 {
			break
		}
		copied += n
	}
	content, err := os.ReadFile(a)
	return fmt.Sprintf("copied %d; file %q %v", copied, content, err)
}

// A directory removed while a process still holds it (its working
// directory, or here an O_PATH descriptor) stats with no link, as on
// overlayfs, instead of failing.
func TestRemovedDirectoryStillStats(t *testing.T) {
	p := mountPairOnEmptyLayer(t, "")
	for _, v := range []*view{p.oracle, p.sut} {
		t.Run(v.target.name(), func(t *testing.T) {
			v.guarded("stat of a removed directory", func() {
				d := filepath.Join(v.mnt, "d")
				if err := os.Mkdir(d, 0o750); err != nil {
					t.Fatal(err)
				}
				held, err := unix.Open(d, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(held)
				if err := os.Remove(d); err != nil {
					t.Fatal(err)
				}
				var st unix.Stat_t
				if err := unix.Fstat(held, &st); err != nil || st.Nlink != 0 || st.Mode&0o7777 != 0o750 || st.Mode&unix.S_IFMT != unix.S_IFDIR {
					t.Fatalf("stat of the removed directory: %v nlink=%d mode=%o", err, st.Nlink, st.Mode)
				}
			})
			if v.hung != "" {
				t.Fatalf("hung during %s", v.hung)
			}
		})
	}
}

// A file read (and closed) before it is copied up reads the copy when it
// is opened again: strata keeps a node's passthrough registration after
// its last handle closes, and must not hand the lower file's out again
// once the data moved up.
func TestReopenAfterCopyUpReadsTheCopy(t *testing.T) {
	p := mountPairOverLowerFile(t, "f", "lower content")
	sameOnBoth(t, p, "reading, writing and reading again", func(mnt string) string {
		f := filepath.Join(mnt, "f")
		var log []string
		for _, step := range []func() (string, error){
			func() (string, error) { b, err := os.ReadFile(f); return string(b), err },
			func() (string, error) { return "chmod", os.Chmod(f, 0o600) },
			func() (string, error) { b, err := os.ReadFile(f); return string(b), err },
			func() (string, error) { return "write", os.WriteFile(f, []byte("upper"), 0o600) },
			func() (string, error) { b, err := os.ReadFile(f); return string(b), err },
		} {
			out, err := step()
			log = append(log, fmt.Sprintf("%q %v", out, err))
		}
		return strings.Join(log, "; ")
	})
}

// A lock goes with the open file it was taken through: once that is
// closed, another open of the file takes the lock at once, even while an
// open made after it stays (strata registers a file for passthrough once
// per node, at its first open, here of the lower file, and must not do so
// through that handle's own descriptor, which would then outlive the
// handle).
func TestLockGoesWithItsDescriptor(t *testing.T) {
	p := mountPairOverLowerFile(t, "f", "x")
	sameOnBoth(t, p, "flock through descriptors opened and closed in turn", func(mnt string) string {
		f := filepath.Join(mnt, "f")
		var log []string
		for round := range 2 {
			first := openRW(t, f)
			stays := openRW(t, f)
			log = append(log, fmt.Sprintf("round %d: first %v", round, unix.Flock(first, unix.LOCK_EX|unix.LOCK_NB)))
			unix.Close(first)
			second := openRW(t, f)
			log = append(log, fmt.Sprintf("second %v", unix.Flock(second, unix.LOCK_EX|unix.LOCK_NB)))
			unix.Close(second)
			unix.Close(stays)
		}
		return strings.Join(log, "; ")
	})
}

func openRW(t *testing.T, path string) int {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}
