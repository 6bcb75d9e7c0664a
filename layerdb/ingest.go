package layerdb

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sys/unix"
)

// ErrDigestMismatch is returned when a blob or a layer's uncompressed tar
// does not have the digest its manifest or config promised.
var ErrDigestMismatch = errors.New("digest mismatch")

// pendingLayer is a layer extracted into a work directory and not yet
// published: tmp holds diff/ and the tar-split record.
type pendingLayer struct {
	tmp   *tmpDir
	layer Layer
	// published: renamed into layers/, no longer ours to delete.
	published bool
}

// layerExpect is what the caller knows about a layer blob before reading it;
// empty digests are not checked.
type layerExpect struct {
	parent digest.Digest // ChainID of the layer below
	diffID digest.Digest
	blob   digest.Digest
	size   int64 // of the blob, for progress; -1 if unknown
	// createdBy and comment describe the layer (from the image history).
	createdBy, comment string
}

// ChainID computes the OCI chain ID of a layer from its parent's chain ID
// and its own DiffID: ChainID(L0) = DiffID(L0), ChainID(Ln) =
// sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
func ChainID(parent, diffID digest.Digest) digest.Digest {
	if parent == "" {
		return diffID
	}
	return digest.FromString(parent.String() + " " + diffID.String())
}

// ingestLayer extracts one layer blob (a tar, plain, gzip or zstd) into a new
// work directory under root/tmp, verifying its digests as it streams. On any
// error the work directory is gone.
func ingestLayer(root string, blob io.Reader, want layerExpect, progress Progress) (*pendingLayer, error) {
	tmp, err := newTmpDir(root, "layer")
	if err != nil {
		return nil, err
	}
	l, err := extractInto(tmp.path, blob, want, progress)
	if err != nil {
		tmp.remove()
		return nil, err
	}
	return &pendingLayer{tmp: tmp, layer: *l}, nil
}

func extractInto(dir string, blob io.Reader, want layerExpect, progress Progress) (*Layer, error) {
	if progress != nil {
		progress.Start("layer "+shortID(want.diffID), want.size)
		defer progress.Finish()
	}
	blobDigester := digest.SHA256.Digester()
	raw := bufio.NewReaderSize(io.TeeReader(io.TeeReader(blob, blobDigester.Hash()), progressWriter{progress}), 1<<20)
	plain, closeDecomp, err := decompress(raw)
	if err != nil {
		return nil, err
	}
	defer closeDecomp()
	diffDigester := digest.SHA256.Digester()
	counted := &countingReader{r: io.TeeReader(plain, diffDigester.Hash())}

	l, err := extractWithTarSplit(dir, counted)
	if err != nil {
		return nil, err
	}
	// Trailing bytes after the compressed stream still belong to the blob.
	if _, err := io.Copy(io.Discard, raw); err != nil {
		return nil, fmt.Errorf("read layer blob: %w", err)
	}
	l.DiffID = diffDigester.Digest()
	l.TarSize = counted.n
	if want.diffID != "" && want.diffID != l.DiffID {
		return nil, fmt.Errorf("%w: layer tar has DiffID %s, its config says %s", ErrDigestMismatch, l.DiffID, want.diffID)
	}
	if want.blob != "" && want.blob != blobDigester.Digest() {
		return nil, fmt.Errorf("%w: layer blob is %s, its manifest says %s", ErrDigestMismatch, blobDigester.Digest(), want.blob)
	}
	l.Parent = want.parent
	l.ChainID = ChainID(want.parent, l.DiffID)
	l.Created = time.Now().UTC()
	l.CreatedBy, l.Comment = want.createdBy, want.comment
	return l, nil
}

// extractWithTarSplit extracts the tar stream into dir/diff while recording
// its headers and padding in dir/tar-split.json.zst, and reads the stream to
// its very end so the caller's digest covers every byte.
func extractWithTarSplit(dir string, tarStream io.Reader) (*Layer, error) {
	diff := filepath.Join(dir, diffDirName)
	if err := os.Mkdir(diff, 0o755); err != nil {
		return nil, fmt.Errorf("create layer directory: %w", err)
	}
	rootFd, err := unix.Open(diff, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open layer directory: %w", err)
	}
	defer unix.Close(rootFd)

	tsFile, err := os.Create(filepath.Join(dir, tarSplitName))
	if err != nil {
		return nil, fmt.Errorf("create tar-split record: %w", err)
	}
	defer tsFile.Close()
	zw, err := zstd.NewWriter(tsFile, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		return nil, fmt.Errorf("zstd writer: %w", err)
	}
	its, done, err := asm.NewInputTarStreamWithDone(tarStream, storage.NewJSONPacker(zw), nil)
	if err != nil {
		return nil, fmt.Errorf("tar-split: %w", err)
	}
	x := newExtractor(rootFd, os.Geteuid() == 0)
	xerr := x.extractAll(tar.NewReader(its))
	if xerr == nil {
		_, xerr = io.Copy(io.Discard, its)
	}
	its.Close()
	splitErr := <-done
	if xerr != nil {
		zw.Close()
		return nil, xerr
	}
	if splitErr != nil {
		zw.Close()
		return nil, fmt.Errorf("read layer tar: %w", splitErr)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("write tar-split record: %w", err)
	}
	if err := tsFile.Sync(); err != nil {
		return nil, fmt.Errorf("sync tar-split record: %w", err)
	}
	return &Layer{Size: x.size, Files: x.files}, nil
}

// decompress sniffs the stream's magic bytes: layers may be gzip or zstd
// whatever their media type says (docker archives do not say).
func decompress(r *bufio.Reader) (io.Reader, func(), error) {
	magic, _ := r.Peek(len(zstdMagic))
	switch sniffCompression(magic) {
	case compressionGzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip stream: %w", err)
		}
		return zr, func() { zr.Close() }, nil
	case compressionZstd:
		zr, err := zstd.NewReader(r)
		if err != nil {
			return nil, nil, fmt.Errorf("zstd stream: %w", err)
		}
		return zr, zr.Close, nil
	}
	return r, func() {}, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func shortID(d digest.Digest) string {
	e := d.Encoded()
	if len(e) > 12 {
		return e[:12]
	}
	if e == "" {
		return "(new)"
	}
	return e
}
