package layerdb

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/gzip"

	"golang.org/x/sys/unix"
)

// tarEntry is one entry of a test tar; body is the file's data.
type tarEntry struct {
	hdr  tar.Header
	body string
}

func file(name, body string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))}, body: body}
}

func dir(name string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755}}
}

func symlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target}}
}

func hardlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target}}
}

func makeTar(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// importTarBytes imports data as a root filesystem tar into a fresh store.
func importTarBytes(t *testing.T, root string, data []byte) error {
	t.Helper()
	src := filepath.Join(t.TempDir(), "layer.tar")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Import(root, src, ImportOptions{})
	return err
}

// assertNoTrace checks that a failed import left no layer, image or
// directory in the store.
func assertNoTrace(t *testing.T, root string) {
	t.Helper()
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	layers, _ := s.Layers()
	images, _ := s.Images()
	if len(layers)+len(images) != 0 {
		t.Errorf("failed import left %d layers and %d images", len(layers), len(images))
	}
	for _, sub := range []string{layersDirName, tmpDirName} {
		entries, _ := os.ReadDir(filepath.Join(root, sub))
		if len(entries) != 0 {
			t.Errorf("failed import left %d entries in %s", len(entries), sub)
		}
	}
}

func expectRejected(t *testing.T, data []byte, want error) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "store")
	err := importTarBytes(t, root, data)
	if err == nil {
		t.Fatal("import succeeded; want an error")
	}
	if want != nil && !errors.Is(err, want) {
		t.Fatalf("error %v; want %v", err, want)
	}
	t.Logf("rejected as expected: %v", err)
	assertNoTrace(t, root)
}

func TestHostileDotDot(t *testing.T) {
	expectRejected(t, makeTar(t, file("a/../../evil", "x")), ErrHostileTar)
}

func TestHostileAbsolutePath(t *testing.T) {
	expectRejected(t, makeTar(t, file("/tmp/evil", "x")), ErrHostileTar)
}

// outsideDir is a directory outside the store that an attack aims at; the
// test fails if anything appears in it.
func outsideDir(t *testing.T) string {
	d := t.TempDir()
	t.Cleanup(func() {
		if entries, _ := os.ReadDir(d); len(entries) != 0 {
			t.Errorf("something was written outside the store: %v", entries)
		}
	})
	return d
}

func TestHostileWriteThroughAbsoluteSymlink(t *testing.T) {
	out := outsideDir(t)
	expectRejected(t, makeTar(t, symlink("link", out), file("link/pwned", "x")), ErrHostileTar)
}

func TestHostileWriteThroughRelativeSymlink(t *testing.T) {
	outsideDir(t)
	expectRejected(t, makeTar(t, dir("a/"), symlink("a/up", "../../../../../../../../tmp"), file("a/up/pwned", "x")), ErrHostileTar)
}

func TestHostileDirectoryThroughSymlink(t *testing.T) {
	out := outsideDir(t)
	expectRejected(t, makeTar(t, symlink("link", out), dir("link/sub/")), ErrHostileTar)
}

func TestHostileHardlinkOutside(t *testing.T) {
	expectRejected(t, makeTar(t, hardlink("passwd", "../../../../etc/passwd")), ErrHostileTar)
}

func TestHostileHardlinkAbsolute(t *testing.T) {
	expectRejected(t, makeTar(t, hardlink("passwd", "/etc/passwd")), ErrHostileTar)
}

func TestHostileHardlinkThroughSymlink(t *testing.T) {
	expectRejected(t, makeTar(t, symlink("etc", "/etc"), hardlink("passwd", "etc/passwd")), ErrHostileTar)
}

func TestHostileWhiteoutDotDot(t *testing.T) {
	expectRejected(t, makeTar(t, dir("a/"), file("a/.wh...", "")), ErrHostileTar)
}

func TestHostileWhiteoutWithData(t *testing.T) {
	expectRejected(t, makeTar(t, file(".wh.x", "data")), ErrHostileTar)
}

func TestHostileDeviceNodeWhenNotRoot(t *testing.T) {
	data := makeTar(t, tarEntry{hdr: tar.Header{Name: "sda", Typeflag: tar.TypeBlock, Mode: 0o600, Devmajor: 8, Devminor: 0}})
	layer := t.TempDir()
	fd, err := unix.Open(layer, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	x := newExtractor(fd, false) // as an unprivileged importer
	err = x.extractAll(tar.NewReader(bytes.NewReader(data)))
	if !errors.Is(err, ErrHostileTar) {
		t.Fatalf("device node as non-root: error %v; want ErrHostileTar", err)
	}
	if entries, _ := os.ReadDir(layer); len(entries) != 0 {
		t.Errorf("device node was created: %v", entries)
	}
}

func TestHostileAbsurdHeaderSize(t *testing.T) {
	data := makeTar(t, file("big", "x"))
	// Rewrite the size field to 1 TiB (octal) and fix the checksum: the
	// stream ends long before that many bytes.
	copy(data[124:136], []byte("20000000000\x00"))
	fixChecksum(data[:512])
	expectRejected(t, data, nil)
}

func fixChecksum(block []byte) {
	copy(block[148:156], []byte("        "))
	var sum int
	for _, b := range block {
		sum += int(b)
	}
	copy(block[148:156], []byte(octal6(sum)+"\x00 "))
}

func octal6(n int) string {
	s := []byte("000000")
	for i := 5; i >= 0; i-- {
		s[i] = byte('0' + n%8)
		n /= 8
	}
	return string(s)
}

func TestHostileTruncatedStream(t *testing.T) {
	data := makeTar(t, file("a", string(bytes.Repeat([]byte("x"), 5000))), file("b", "y"))
	expectRejected(t, data[:1500], nil)
}

func TestHostileCorruptHeader(t *testing.T) {
	data := makeTar(t, file("a", "x"), file("b", "y"))
	data[1024+10] ^= 0xff // second header: checksum no longer matches
	expectRejected(t, data, nil)
}

func TestHostileCorruptGzip(t *testing.T) {
	var buf bytes.Buffer
	zw := newGzipWriter(&buf)
	zw.Write(makeTar(t, file("a", string(bytes.Repeat([]byte("hello"), 1000)))))
	zw.Close()
	data := buf.Bytes()
	data[len(data)/2] ^= 0xff
	expectRejected(t, data, nil)
}

func TestHostilePrivateXattrDropped(t *testing.T) {
	e := dir("d/")
	e.hdr.PAXRecords = map[string]string{"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.overlay.redirect": "/etc"}
	root := filepath.Join(t.TempDir(), "store")
	if err := importTarBytes(t, root, makeTar(t, e, file("d/f", "x"))); err != nil {
		t.Fatal(err)
	}
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	layers, _ := s.Layers()
	d := filepath.Join(layers[0].Dir, "d")
	for _, x := range []string{"trusted.overlay.opaque", "user.overlay.redirect"} {
		if _, err := unix.Lgetxattr(d, x, nil); err == nil {
			t.Errorf("tar set private xattr %s", x)
		}
	}
}

func TestHostileDuplicateFileWithData(t *testing.T) {
	expectRejected(t, makeTar(t, file("a", "one"), file("a", "two")), ErrHostileTar)
}

func newGzipWriter(w *bytes.Buffer) *gzip.Writer { return gzip.NewWriter(w) }
