package store

import "unsafe"

// recordBlocks hands out the memory of parsed records (the Record values,
// their Disks and their Config bytes) carved from larger blocks, so that a
// List of many records allocates a few hundred blocks instead of tens of
// thousands of small objects. The text of a record's strings is a slice of
// a byte block too (text). Blocks start small and double up to a limit,
// so a short listing allocates little. Each piece is zeroed and used by one
// record only; slices are capped at their length (an append by the caller
// reallocates rather than writing over a neighbour). The records of one
// List share blocks: a record kept after the others are dropped keeps its
// blocks alive, at most a few tens of KiB. A nil *recordBlocks allocates
// each piece on its own. recordBlocks also keeps the fast path's working
// memory (canonScratch) from one record to the next. Not safe for
// concurrent use: List gives each reader its own.
type recordBlocks struct {
	records []Record
	disks   []Disk
	bytes   []byte
	scratch *canonScratch
	// The sizes of the last blocks allocated.
	nrecords, ndisks, nbytes int
}

const (
	maxRecordsPerBlock = 32
	maxDisksPerBlock   = 64
	maxBytesPerBlock   = 16 << 10
)

// nextBlock sets *last to the size of the next block and returns it: an
// eighth of limit at first, then twice the last size, up to limit.
func nextBlock(last *int, limit int) int {
	*last = min(max(2**last, limit/8), limit)
	return *last
}

// record returns a zero Record.
func (b *recordBlocks) record() *Record {
	if b == nil {
		return &Record{}
	}
	if len(b.records) == 0 {
		b.records = make([]Record, nextBlock(&b.nrecords, maxRecordsPerBlock))
	}
	r := &b.records[0]
	b.records = b.records[1:]
	return r
}

// diskSlice returns n zero Disks.
func (b *recordBlocks) diskSlice(n int) []Disk {
	if b == nil || n > maxDisksPerBlock/8 {
		return make([]Disk, n)
	}
	if len(b.disks) < n {
		b.disks = make([]Disk, nextBlock(&b.ndisks, maxDisksPerBlock))
	}
	d := b.disks[:n:n]
	b.disks = b.disks[n:]
	return d
}

// byteSlice returns an empty slice with capacity n.
func (b *recordBlocks) byteSlice(n int) []byte {
	if b == nil || n > maxBytesPerBlock/8 {
		return make([]byte, 0, n)
	}
	if cap(b.bytes)-len(b.bytes) < n {
		b.bytes = make([]byte, 0, nextBlock(&b.nbytes, maxBytesPerBlock))
	}
	s := b.bytes[len(b.bytes) : len(b.bytes) : len(b.bytes)+n]
	b.bytes = b.bytes[:len(b.bytes)+n]
	return s
}

// text returns a string holding the bytes of t: a slice of a byte block
// that nothing writes again (for a nil *recordBlocks, or a long t, a
// string of its own).
func (b *recordBlocks) text(t []byte) string {
	if b == nil || len(t) == 0 || len(t) > maxBytesPerBlock/8 {
		return string(t)
	}
	s := append(b.byteSlice(len(t)), t...)
	return unsafe.String(unsafe.SliceData(s), len(s))
}

// canonScratch returns the fast path's working memory: the same each time,
// or a new one for a nil *recordBlocks.
func (b *recordBlocks) canonScratch() *canonScratch {
	if b == nil {
		return newCanonScratch()
	}
	if b.scratch == nil {
		b.scratch = newCanonScratch()
	}
	return b.scratch
}
