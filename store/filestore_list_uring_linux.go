package store

import (
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// uringMinBatch is the smallest batch read through io_uring: below it
	// the three submissions of a round cost more than the system calls
	// they save.
	uringMinBatch = 16
	// ringRound is the most files a ring has open at once: a batch is read
	// in rounds of at most this many.
	ringRound = 64
	// ringEntries holds a round's reads and closes.
	ringEntries = 2 * ringRound
)

// ringFiles counts the record files read through a ring, for the tests.
var ringFiles atomic.Int64

// ringsOpen is held for reading by each round while it has files open,
// and for writing by openWaiting.
var ringsOpen sync.RWMutex

// emptyPath is the "" that statx(fd, "", AT_EMPTY_PATH) is given, in
// memory that stays put while the kernel reads it.
var emptyPath = new([1]byte)

// ringBatch is the memory the kernel writes into while a round is read
// through a ring: each file's descriptor, stat, result and data.
type ringBatch struct {
	off   bool // a round ran out of descriptors: the rest one by one
	fds   []int32
	stx   []unix.Statx_t
	res   []int32
	datas [][]byte
}

// readRing reads the record files names (each followed in memory by a
// NUL, as readRecordNames lays them out) into lr.files, like readEach,
// with the opens, stats, reads and closes handed to the kernel through
// io_uring: three submissions per round of up to ringRound files. It
// reports false, having read nothing, for a batch too small to gain from
// it or when no ring can be had.
//
// Only the common case is read through the ring: a regular file of this
// user, not writable by group or others, of 1 to MaxRecordSize bytes, read
// whole at once. Every other file gets what readEach would give it: one
// the ring could not open gets readOpened's error for that open's errno
// (or is opened again on its own if the process was out of descriptors);
// one the ring opened that fails the checks, or is empty, goes to
// readOpened on that same descriptor, so that it is opened once; one read
// short is read again on its own.
func (lr *listReader) readRing(names []string) bool {
	if len(names) < uringMinBatch || lr.rb.off {
		return false
	}
	r := acquireRing()
	if r == nil {
		return false
	}
	if lr.rb.fds == nil {
		lr.rb = ringBatch{
			fds: make([]int32, ringRound), stx: make([]unix.Statx_t, ringRound),
			res: make([]int32, ringRound), datas: make([][]byte, ringRound),
		}
	}
	total := 0
	for lo := 0; lo < len(names); lo += ringRound {
		if lr.rb.off {
			releaseRing(r)
			lr.readEach(names[lo:])
			return true
		}
		round := names[lo:min(lo+ringRound, len(names))]
		n, ok := lr.ringRound(r, round)
		if !ok {
			// The ring is abandoned (see submit): the rest the slow way.
			lr.readEach(names[lo:])
			return true
		}
		total += n
	}
	releaseRing(r)
	lr.fit(total)
	return true
}

// ringRound reads one round of readRing into lr.files and returns the
// bytes it read, or false if r failed: then r is abandoned with the memory
// the kernel may still write into, nothing of the round is in lr.files,
// and io_uring is not used again.
func (lr *listReader) ringRound(r *uring, names []string) (int, bool) {
	rb := &lr.rb
	fds, stx, res, datas := rb.fds[:len(names)], rb.stx[:len(names)], rb.res[:len(names)], rb.datas[:len(names)]
	clear(datas)
	ringsOpen.RLock()
	// fail gives up the ring after a failed submission. open(i) says
	// whether fds[i] is still ours to close: no close of it was queued.
	fail := func(open func(i int) bool) (int, bool) {
		ringsOpen.RUnlock()
		for i, fd := range fds {
			if fd >= 0 && open(i) {
				unix.Close(int(fd))
			}
		}
		abandon(r, *rb, names, lr.buf)
		lr.rb, lr.buf = ringBatch{}, nil
		return 0, false
	}

	for i, name := range names {
		fds[i] = -1
		s := r.queue()
		s.opcode, s.fd = uringOpOpenat, int32(lr.dirfd)
		s.addr = uint64(uintptr(unsafe.Pointer(unsafe.StringData(name))))
		s.opFlags = readFlags
		s.userData = uint64(i)
	}
	all := func(int) bool { return true }
	if r.submit(func(i uint64, v int32) { fds[i] = v }) != nil {
		return fail(all) // the opens reaped so far; the others are lost
	}

	for i, fd := range fds {
		res[i] = -1
		if fd < 0 {
			continue
		}
		s := r.queue()
		s.opcode, s.fd = uringOpStatx, fd
		s.addr = uint64(uintptr(unsafe.Pointer(emptyPath)))
		s.opFlags = unix.AT_EMPTY_PATH
		s.len = unix.STATX_TYPE | unix.STATX_MODE | unix.STATX_UID | unix.STATX_SIZE
		s.off = uint64(uintptr(unsafe.Pointer(&stx[i])))
		s.userData = uint64(i)
	}
	if r.submit(func(i uint64, v int32) { res[i] = v }) != nil {
		return fail(all)
	}

	total := 0
	for i, fd := range fds {
		if fd < 0 {
			continue
		}
		st := &stx[i]
		ok := res[i] == 0 && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o022 == 0 &&
			int64(st.Uid) == int64(lr.euid) && st.Size > 0 && st.Size <= MaxRecordSize
		res[i] = -1
		if !ok {
			continue // left open for readOpened
		}
		size := int(st.Size)
		total += size
		if room := lr.buf[len(lr.buf):]; cap(room) >= size {
			datas[i] = room[:size:size]
			lr.buf = lr.buf[:len(lr.buf)+size]
		} else {
			datas[i] = make([]byte, size)
		}
		s := r.queue()
		s.opcode, s.fd, s.flags = uringOpRead, fd, uringHardlink
		s.addr = uint64(uintptr(unsafe.Pointer(&datas[i][0])))
		s.len = uint32(size)
		s.userData = uint64(i)
		c := r.queue()
		c.opcode, c.fd = uringOpClose, fd
		c.userData = closing | uint64(i)
	}
	if r.submit(func(i uint64, v int32) {
		if i&closing == 0 {
			res[i] = v
		}
	}) != nil {
		// Those read had their close queued (which may or may not have
		// run): left alone; those left open for readOpened are closed.
		return fail(func(i int) bool { return datas[i] == nil })
	}

	ringsOpen.RUnlock()
	read := int64(0)
	for i, name := range names {
		var (
			data []byte
			err  error
		)
		switch fd := fds[i]; {
		case datas[i] != nil && int(res[i]) == len(datas[i]):
			data = datas[i]
			read++
		case datas[i] != nil: // read short or failed; closed
			data, err = lr.readAgain(name)
		case fd >= 0: // failed a check; still open
			data, err = readOpened(int(fd), nil, lr.dir, name, nil, lr.euid)
		case fd == -int32(unix.EMFILE) || fd == -int32(unix.ENFILE):
			rb.off = true // short of descriptors: no more rounds
			data, err = lr.readAgain(name)
		default:
			data, err = readOpened(-1, unix.Errno(-fd), lr.dir, name, nil, lr.euid)
		}
		lr.files = append(lr.files, readFile{data, err})
	}
	ringFiles.Add(read)
	return total, true
}

// readAgain opens and reads the record file name on its own, as readEach
// does.
func (lr *listReader) readAgain(name string) ([]byte, error) {
	fd, err := openWaiting(lr.dirfd, name)
	return readOpened(fd, err, lr.dir, name, nil, lr.euid)
}

// openWaiting is openTerminated, except that an open that fails for want
// of descriptors is tried again once no ring holds a round's files open:
// it then sees the descriptors free that it would have seen without the
// rings.
func openWaiting(dirfd int, name string) (int, error) {
	fd, err := openTerminated(dirfd, name)
	if err == unix.EMFILE || err == unix.ENFILE {
		ringsOpen.Lock()
		fd, err = openTerminated(dirfd, name)
		ringsOpen.Unlock()
	}
	return fd, err
}

// closing marks the user data of a close, whose result is not used.
const closing = 1 << 32
