package fs

import (
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Which READDIRPLUS entries carry attributes.
//
// The kernel lists every directory with READDIRPLUS, which asks the daemon
// to look up each entry: a stat of the backing file, a node, and in the
// kernel a dentry and an inode. That is what ls -l wants, but a walker
// such as find, du or a container tool scanning an image reads names and
// types only, and for it the lookups of files are pure cost (most of a
// cold find's reads of the disk, and a node per file in memory: a walk of
// a million files kept a million nodes). An entry may be returned without
// attributes (node id 0); the kernel then just lists the name and looks
// it up if and when someone uses it.
//
// So subdirectories always come with attributes (a walker goes into them
// next), and files do when the recent past says they will be used: the
// policy counts, over the listings that left files bare, how many of
// those files were then looked up one by one. If at least half were, files
// come with attributes; every sixteenth listing still leaves them bare to
// keep measuring, so the policy follows a workload that changes. The
// counts decay, so the last few hundred files listed bare decide.
type plusPolicy struct {
	mu       sync.Mutex
	bare     float64 // files listed without attributes (decayed)
	lookedUp float64 // of those, looked up afterwards (decayed)
	listings uint64
}

const (
	plusSampleEvery = 16  // in attribute mode, one listing in this many is bare
	plusDecayAt     = 512 // halve the counts when bare reaches this
	plusMinEvidence = 32  // bare files needed before leaving attribute mode
)

// filesWithAttrs decides for a listing about to be served.
func (p *plusPolicy) filesWithAttrs() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.listings++
	if p.filesWantedLocked() {
		return p.listings%plusSampleEvery != 0
	}
	return false
}

// filesWanted reports whether files are being used after listing, as far
// as the policy knows now (the prefetcher stats files ahead only then).
func (p *plusPolicy) filesWanted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.filesWantedLocked()
}

func (p *plusPolicy) filesWantedLocked() bool {
	return p.bare < plusMinEvidence || 2*p.lookedUp >= p.bare
}

// listedBare records files handed out without attributes.
func (p *plusPolicy) listedBare(files int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bare += float64(files)
	if p.bare >= plusDecayAt {
		p.bare /= 2
		p.lookedUp /= 2
	}
}

// bareLookedUp records a lookup of a file that was listed bare.
func (p *plusPolicy) bareLookedUp() {
	p.mu.Lock()
	p.lookedUp++
	p.mu.Unlock()
}

// lookup looks up an entry the listing hands out with READDIRPLUS. A file
// in a bare listing gets no attributes: the error only says so, and the
// kernel sees node id 0.
func (h *dirHandle) lookup(e fuse.DirEntry, out *fuse.EntryOut) (*node, syscall.Errno) {
	if !h.filesWithAttrs && e.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, syscall.ENOENT
	}
	return h.n.lookupEntry(e.Name, out)
}
