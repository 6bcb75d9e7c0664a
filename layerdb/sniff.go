package layerdb

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// sourceKind is what an import SOURCE turned out to be.
type sourceKind int

const (
	kindOCILayout sourceKind = iota
	kindDockerArchive
	kindRootfsTar
	kindRootfsDir
)

// compression is how a file or a layer blob is compressed, told by its
// magic bytes: media types and file names are not to be trusted (a docker
// archive names no media type at all).
type compression int

const (
	compressionNone compression = iota
	compressionGzip
	compressionZstd
)

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

func sniffCompression(magic []byte) compression {
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		return compressionGzip
	case bytes.HasPrefix(magic, zstdMagic):
		return compressionZstd
	}
	return compressionNone
}

// openSource classifies SOURCE: a directory with an oci-layout file is an
// OCI layout, any other directory a root filesystem; a tar (plain, gzip or
// zstd) whose entries are all ones an image archive has (archiveEntryName)
// is a docker archive if it has manifest.json at its top, an OCI archive
// if it has oci-layout and index.json; any other file is a root filesystem
// tar. A compressed archive is decompressed into a work
// directory under root/tmp, which the returned close function removes.
func openSource(root, source string) (opener, sourceKind, func(), error) {
	st, err := os.Stat(source)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("import source: %w", err)
	}
	if st.IsDir() {
		return openSourceDir(source)
	}
	f, err := os.Open(source)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("open %s: %w", source, err)
	}
	closeFile := func() { f.Close() }
	magic, err := peekFile(f, 512)
	if err != nil {
		f.Close()
		return nil, 0, nil, err
	}
	if sniffCompression(magic) != compressionNone {
		o, kind, closeSpool, err := openCompressedArchive(root, f)
		if err != nil || o == nil {
			f.Close()
			return nil, kind, func() {}, err
		}
		return o, kind, func() { closeSpool(); f.Close() }, nil
	}
	if !isTarHeader(magic) {
		return nil, kindRootfsTar, closeFile, nil
	}
	o, kind := classifyTar(f)
	return o, kind, closeFile, nil
}

func openSourceDir(source string) (opener, sourceKind, func(), error) {
	fd, err := unix.Open(source, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("open %s: %w", source, err)
	}
	d := dirOpener{fd: fd}
	closeFn := func() { unix.Close(fd) }
	if d.has("oci-layout") {
		return d, kindOCILayout, closeFn, nil
	}
	return d, kindRootfsDir, closeFn, nil
}

// peekFile reads up to n bytes from the start of f and rewinds it.
func peekFile(f *os.File, n int) ([]byte, error) {
	buf := make([]byte, n)
	got, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rewind %s: %w", f.Name(), err)
	}
	return buf[:got], nil
}

// isTarHeader reports whether block starts with a ustar header; an empty
// file counts as an (empty) tar.
func isTarHeader(block []byte) bool {
	if len(block) == 0 {
		return true
	}
	return len(block) >= 262 && string(block[257:262]) == "ustar"
}

// classifyTar indexes an uncompressed tar and says whether it is a docker
// archive, an OCI archive or (returning a nil opener) a root filesystem.
// An archive has only names an image archive has, and its marker files; a
// root filesystem that happens to hold a /manifest.json stays one. An
// unreadable tar is a root filesystem too: its extraction then reports
// what is wrong with it.
func classifyTar(f *os.File) (opener, sourceKind) {
	t, err := indexTar(f)
	if err != nil || t.foreign {
		f.Seek(0, io.SeekStart)
		return nil, kindRootfsTar
	}
	switch {
	case t.has("manifest.json"):
		return t, kindDockerArchive
	case t.has("oci-layout") && t.has("index.json"):
		return t, kindOCILayout
	}
	return nil, kindRootfsTar
}

// openCompressedArchive handles "docker save | gzip" and its kin. Layers
// are read by offset, so the archive must be uncompressed somewhere: its
// decompressed stream is copied into a work directory (flocked, so a kill
// leaves nothing that Open does not remove) while its entry names are
// checked. At the first name no image archive has, the copy stops and the
// file is a compressed root filesystem tar, which costs only the prefix
// read so far. It returns a nil opener for a root filesystem (whose
// importer reads SOURCE again from its start).
func openCompressedArchive(root string, f *os.File) (opener, sourceKind, func(), error) {
	tmp, err := newTmpDir(root, "archive")
	if err != nil {
		return nil, 0, nil, err
	}
	spool, err := spoolArchive(f, filepath.Join(tmp.path, "archive.tar"))
	if err != nil || spool == nil {
		tmp.remove()
		return nil, kindRootfsTar, nil, err
	}
	closeFn := func() { spool.Close(); tmp.remove() }
	o, kind := classifyTar(spool)
	if o == nil {
		closeFn()
		return nil, kindRootfsTar, nil, nil
	}
	return o, kind, closeFn, nil
}

// spoolArchive decompresses f into a new file at dst for as long as its
// entries look like an image archive's. It returns the spooled file, or nil
// when f is something else (a root filesystem tar, or an unreadable
// stream, whose extraction will report the error).
func spoolArchive(f *os.File, dst string) (*os.File, error) {
	plain, closeDecomp, err := decompress(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return nil, nil
	}
	defer closeDecomp()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool compressed archive: %w", err)
	}
	// tar.Reader skips file data by reading it (a TeeReader cannot seek),
	// so every byte of the archive passes through to out.
	tee := io.TeeReader(plain, out)
	if !archiveEntries(tar.NewReader(tee)) {
		out.Close()
		return nil, nil
	}
	// The end-of-archive blocks after the last entry are not read by Next.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		out.Close()
		return nil, nil
	}
	if _, err := out.Seek(0, io.SeekStart); err != nil {
		out.Close()
		return nil, fmt.Errorf("spool compressed archive: %w", err)
	}
	return out, nil
}

// archiveEntries reads a tar to its end and reports whether it was readable
// and every entry name is one an image archive has.
func archiveEntries(tr *tar.Reader) bool {
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return true
		}
		if err != nil || !archiveEntryName(hdr.Name) {
			return false
		}
	}
}

// archiveEntryName reports whether name can occur in an image archive:
// docker save, podman save and skopeo's docker-archive write manifest.json,
// repositories, <hex>.json configs, <hex>.tar layers or <hex>/ directories;
// OCI archives write oci-layout, index.json and blobs/. A root filesystem
// tar has bin, etc, usr, ... and is told apart at its first such entry.
func archiveEntryName(name string) bool {
	clean := strings.TrimPrefix(path.Clean("/"+name), "/")
	if clean == "" {
		return true // "./", which some tars start with
	}
	top, _, _ := strings.Cut(clean, "/")
	switch top {
	case "manifest.json", "index.json", "oci-layout", "repositories", "blobs":
		return true
	}
	for _, ext := range []string{".json", ".tar"} {
		top = strings.TrimSuffix(top, ext)
	}
	return isHex64(top)
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
