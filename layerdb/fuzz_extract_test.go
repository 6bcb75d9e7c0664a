package layerdb

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The extractor fuzz targets apply hostile tars to a layer directory that
// has something worth attacking next to it, and check that nothing outside
// the layer changed, whether the extraction failed or not.
//
//	base/outside/victim   a file a tar must not reach
//	base/x/y/layer/diff/  the layer root (extractInto writes diff/ here)
//
// Relative symlinks of four ".." from the layer root reach base/outside.

const victimBody = "victim\n"

// relOutside is base/outside as seen from the layer root.
const relOutside = "../../../../outside"

type sandbox struct {
	base, outside, layer string
	victim               unix.Stat_t
}

func newSandbox(t *testing.T) *sandbox {
	t.Helper()
	base := t.TempDir()
	sb := &sandbox{base: base, outside: filepath.Join(base, "outside"), layer: filepath.Join(base, "x", "y", "layer")}
	if err := os.MkdirAll(sb.outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(sb.layer, 0o755); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(sb.outside, "victim")
	if err := os.WriteFile(victim, []byte(victimBody), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(victim, &sb.victim); err != nil {
		t.Fatal(err)
	}
	return sb
}

// check fails the test if anything outside the layer directory was created,
// removed, linked to or changed.
func (sb *sandbox) check(t *testing.T) {
	t.Helper()
	for dir, want := range map[string]string{
		sb.base:                          "outside x",
		filepath.Join(sb.base, "x"):      "y",
		filepath.Join(sb.base, "x", "y"): "layer",
		sb.outside:                       "victim",
	} {
		if got := dirNames(t, dir); got != want {
			t.Fatalf("outside the layer, %s now holds %q; want %q", dir, got, want)
		}
	}
	victim := filepath.Join(sb.outside, "victim")
	var st unix.Stat_t
	if err := unix.Lstat(victim, &st); err != nil {
		t.Fatalf("victim: %v", err)
	}
	if st.Ino != sb.victim.Ino || st.Nlink != 1 || st.Mode != sb.victim.Mode || st.Uid != sb.victim.Uid || st.Gid != sb.victim.Gid || st.Size != sb.victim.Size {
		t.Fatalf("victim changed: %+v, was %+v", st, sb.victim)
	}
	if b, _ := os.ReadFile(victim); string(b) != victimBody {
		t.Fatalf("victim's content changed to %q", b)
	}
}

func dirNames(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("list %s: %v", dir, err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

// extractHostile runs the import path's extraction (decompression sniffing,
// tar-split recording, the extractor) on data in the sandbox's layer.
func (sb *sandbox) extract(data []byte) error {
	_, err := extractInto(sb.layer, bytes.NewReader(data), layerExpect{size: -1}, nil)
	return err
}

// FuzzExtractTar feeds arbitrary bytes to layer extraction as a layer blob
// (plain, gzip or zstd). The seeds are small tars in testdata plus every
// script of FuzzExtractEntries' corpus, turned into a tar.
func FuzzExtractTar(f *testing.F) {
	for _, script := range scriptSeeds(f) {
		if data, ok := scriptTar(script, "/nonexistent-outside"); ok {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sb := newSandbox(t)
		err := sb.extract(data)
		t.Logf("extract: %v", err)
		sb.check(t)
	})
}

// FuzzExtractEntries builds a small tar from a script, so the fuzzer
// mutates entries (names, types, link targets) rather than header bytes and
// checksums. Each line is "TYPE NAME [ARG]":
//
//	f NAME DATA     regular file
//	d NAME          directory
//	s NAME TARGET   symlink
//	h NAME TARGET   hard link
//	p NAME          fifo
//	c NAME          character device 0/0 (overlay's whiteout form)
//	b NAME          block device 7:0
//	x NAME KEY=VAL  empty file with an xattr (PAX SCHILY.xattr.KEY)
//
// In names and targets, $OUT is the absolute path of the sandbox's outside
// directory and $REL the relative path to it from the layer root.
func FuzzExtractEntries(f *testing.F) {
	f.Fuzz(func(t *testing.T, script string) {
		sb := newSandbox(t)
		data, ok := scriptTar(script, sb.outside)
		if !ok {
			return // a header archive/tar refuses to write: nothing to test
		}
		err := sb.extract(data)
		t.Logf("extract: %v", err)
		sb.check(t)
	})
}

// maxScriptEntries bounds a script, so one input stays a small tar.
const maxScriptEntries = 64

// scriptTar turns a FuzzExtractEntries script into a tar. ok is false when
// archive/tar cannot encode an entry.
func scriptTar(script, outside string) ([]byte, bool) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	lines := strings.Split(script, "\n")
	if len(lines) > maxScriptEntries {
		lines = lines[:maxScriptEntries]
	}
	for _, line := range lines {
		hdr, body, ok := scriptEntry(line, outside)
		if !ok {
			continue
		}
		if tw.WriteHeader(hdr) != nil {
			return nil, false
		}
		if _, err := tw.Write(body); err != nil {
			return nil, false
		}
	}
	if tw.Close() != nil {
		return nil, false
	}
	return buf.Bytes(), true
}

// scriptEntry parses one script line into a tar header and its data.
func scriptEntry(line, outside string) (*tar.Header, []byte, bool) {
	expand := strings.NewReplacer("$OUT", outside, "$REL", relOutside).Replace
	fields := strings.SplitN(line, " ", 3)
	if len(fields) < 2 || len(fields[0]) != 1 {
		return nil, nil, false
	}
	name, arg := expand(fields[1]), ""
	if len(fields) == 3 {
		arg = expand(fields[2])
	}
	hdr := &tar.Header{Name: name, Mode: 0o644, Format: tar.FormatPAX}
	var body []byte
	switch fields[0] {
	case "f":
		hdr.Typeflag, body = tar.TypeReg, []byte(arg)
	case "d":
		hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o755
	case "s":
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, arg
	case "h":
		hdr.Typeflag, hdr.Linkname = tar.TypeLink, arg
	case "p":
		hdr.Typeflag = tar.TypeFifo
	case "c":
		hdr.Typeflag = tar.TypeChar
	case "b":
		hdr.Typeflag, hdr.Devmajor = tar.TypeBlock, 7
	case "x":
		k, v, _ := strings.Cut(arg, "=")
		hdr.Typeflag, hdr.PAXRecords = tar.TypeReg, map[string]string{"SCHILY.xattr." + k: v}
	default:
		return nil, nil, false
	}
	hdr.Size = int64(len(body))
	return hdr, body, true
}

// scriptSeeds reads FuzzExtractEntries' seed corpus, so the raw tar target
// starts from the same cases.
func scriptSeeds(f *testing.F) []string {
	f.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzExtractEntries", "*"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed corpus for FuzzExtractEntries in testdata (%v)", err)
	}
	var out []string
	for _, file := range files {
		s, err := readStringSeed(file)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// readStringSeed reads a corpus file of a fuzz target that takes one
// string ("go test fuzz v1" then string("...")).
func readStringSeed(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	lines := strings.SplitN(strings.TrimSpace(string(b)), "\n", 2)
	if len(lines) != 2 || lines[0] != "go test fuzz v1" {
		return "", fmt.Errorf("%s: not a fuzz corpus file", file)
	}
	lit, ok := strings.CutPrefix(lines[1], "string(")
	if !ok || !strings.HasSuffix(lit, ")") {
		return "", fmt.Errorf("%s: not a string seed", file)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
	if err != nil {
		return "", fmt.Errorf("%s: %w", file, err)
	}
	return s, nil
}
