package whiteout

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestOCITarget(t *testing.T) {
	cases := []struct {
		name, target string
		ok           bool
	}{
		{".wh.foo", "foo", true},
		{".wh..hidden", ".hidden", true},
		{".wh..wh..opq", "", false}, // the opaque marker hides no name
		{".wh.", "", false},
		{".wh..", "", false},
		{".wh...", "", false},
		{"foo", "", false},
		{".whfoo", "", false},
		{".wh.a/b", "", false},
	}
	for _, c := range cases {
		target, ok := OCITarget(c.name)
		if target != c.target || ok != c.ok {
			t.Errorf("OCITarget(%q) = %q, %v; want %q, %v", c.name, target, ok, c.target, c.ok)
		}
	}
	if OCIName("foo") != ".wh.foo" || !IsOCIOpaque(".wh..wh..opq") || IsOCIOpaque(".wh.foo") {
		t.Error("OCIName/IsOCIOpaque disagree with the OCI spec")
	}
}

func TestIsPrivateXattr(t *testing.T) {
	for name, want := range map[string]bool{
		"trusted.overlay.opaque": true, "user.overlay.whiteout": true, "trusted.overlay.redirect": true,
		"user.foo": false, "security.capability": false, "trusted.overlayfoo": false,
	} {
		if got := IsPrivateXattr(name); got != want {
			t.Errorf("IsPrivateXattr(%q) = %v", name, got)
		}
	}
}

func openDir(t *testing.T, dir string) int {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func lstat(t *testing.T, dirfd int, name string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
	return &st
}

// Every format written must be read back as a whiteout, and a plain file
// must not.
func TestCreateAndReadBack(t *testing.T) {
	dir := t.TempDir()
	fd := openDir(t, dir)

	if err := Create(fd, "char", FormatOverlay); err != nil {
		t.Fatal(err)
	}
	if !IsWhiteout(fd, "char", lstat(t, fd, "char")) {
		t.Error("char device 0/0 is not read as a whiteout")
	}

	if err := Create(fd, "xattr", FormatUserXattr); err != nil {
		t.Fatal(err)
	}
	if !IsWhiteout(fd, "xattr", lstat(t, fd, "xattr")) {
		t.Error("zero-size file with user.overlay.whiteout is not read as a whiteout")
	}

	if err := Create(fd, "oci", FormatOCI); err != nil {
		t.Fatal(err)
	}
	if target, ok := OCITarget(".wh.oci"); !ok || target != "oci" {
		t.Error(".wh.oci not read back")
	}
	lstat(t, fd, ".wh.oci")

	if err := os.WriteFile(filepath.Join(dir, "plain"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if IsWhiteout(fd, "plain", lstat(t, fd, "plain")) {
		t.Error("an empty plain file is read as a whiteout")
	}
	if err := unix.Mknodat(fd, "realdev", unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	if IsWhiteout(fd, "realdev", lstat(t, fd, "realdev")) {
		t.Error("/dev/null's device number is read as a whiteout")
	}
	if err := Create(fd, "char", FormatOverlay); err == nil {
		t.Error("Create over an existing name succeeded")
	}
	if err := Create(fd, "..", FormatOCI); err == nil {
		t.Error("Create accepted the name ..")
	}
}

func TestOpaqueFormats(t *testing.T) {
	for _, f := range []Format{FormatOverlay, FormatUserXattr, FormatOCI} {
		dir := t.TempDir()
		fd := openDir(t, dir)
		if IsOpaque(fd) {
			t.Fatalf("format %d: a new directory is opaque", f)
		}
		if err := SetOpaque(fd, f); err != nil {
			t.Fatalf("format %d: %v", f, err)
		}
		switch f {
		case FormatOCI:
			lstat(t, fd, OCIOpaque)
		default:
			if !IsOpaque(fd) {
				t.Errorf("format %d: not read back as opaque", f)
			}
		}
		if err := ClearOpaque(fd); err != nil {
			t.Fatalf("format %d: clear: %v", f, err)
		}
		if IsOpaque(fd) {
			t.Errorf("format %d: still opaque after ClearOpaque", f)
		}
		if _, err := os.Lstat(filepath.Join(dir, OCIOpaque)); err == nil {
			t.Errorf("format %d: OCI marker left after ClearOpaque", f)
		}
	}
}

func TestDefaultFormat(t *testing.T) {
	if DefaultFormat(0) != FormatOverlay || DefaultFormat(1000) != FormatOCI {
		t.Error("DefaultFormat: root writes overlay's format, others OCI files")
	}
}

// FuzzOCITarget checks the name rules whatever the input: a target is a
// valid single name, and OCIName inverts OCITarget.
func FuzzOCITarget(f *testing.F) {
	for _, s := range []string{".wh.foo", ".wh..wh..opq", ".wh.", ".wh..", "foo", ".wh.a/b", ".wh.\x00", ".wh.ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		target, ok := OCITarget(name)
		if !ok {
			if target != "" {
				t.Fatalf("OCITarget(%q) returned %q with ok=false", name, target)
			}
			return
		}
		if !ValidName(target) {
			t.Fatalf("OCITarget(%q) = %q, not a valid name", name, target)
		}
		if OCIName(target) != name {
			t.Fatalf("OCIName(OCITarget(%q)) = %q", name, OCIName(target))
		}
		if IsOCIOpaque(name) {
			t.Fatalf("%q is both a whiteout and the opaque marker", name)
		}
	})
}
