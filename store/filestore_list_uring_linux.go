package store

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// uringMinBatch is the smallest batch read through io_uring: below it,
	// setting up a ring costs more than the system calls it saves.
	uringMinBatch = 16
	// uringEntries holds a full batch's reads and closes.
	uringEntries = 2 * listBatchSize
)

// ringBatches counts the batches read through the ring, for the tests.
var ringBatches atomic.Int64

// emptyPath is the "" that statx(fd, "", AT_EMPTY_PATH) is given, in
// memory that stays put while the kernel reads it.
var emptyPath = new([1]byte)

// ringBatch is the memory the kernel writes into while a batch is read
// through the ring: each file's descriptor, stat, read result and data.
type ringBatch struct {
	fds   []int32
	stx   []unix.Statx_t
	res   []int32
	datas [][]byte
}

// readRing reads the record files names (each followed in memory by a
// NUL, as readRecordNames lays them out) into lr.files, like readEach,
// with the opens, stats, reads and closes of the batch handed to the
// kernel through io_uring, three submissions in all. It reports false,
// having read nothing, when io_uring cannot be used.
//
// Only the common case goes through the ring: a regular file of this user,
// not writable by group or others, of 1 to MaxRecordSize bytes, read whole
// in one go. Every other file (one that cannot be opened, fails a check,
// is empty or comes back short) is read again by readOpened on its own, so
// that its error, or its content, is exactly what readEach gives.
func (lr *listReader) readRing(names []string) bool {
	if len(names) < uringMinBatch || len(names) > uringEntries/2 {
		return false
	}
	if lr.ring == nil {
		if lr.ringFailed {
			return false
		}
		if lr.ring = newURing(uringEntries); lr.ring == nil || lr.ring.room() < 2*len(names) {
			lr.ringFailed = true
			lr.releaseRing()
			return false
		}
	}
	r := lr.ring
	rb := &lr.rb
	if cap(rb.fds) < len(names) {
		*rb = ringBatch{
			fds: make([]int32, listBatchSize), stx: make([]unix.Statx_t, listBatchSize),
			res: make([]int32, listBatchSize), datas: make([][]byte, listBatchSize),
		}
	}
	fds, stx, res, datas := rb.fds[:len(names)], rb.stx[:len(names)], rb.res[:len(names)], rb.datas[:len(names)]
	clear(datas)
	fail := func() bool {
		// The kernel may still write into the batch's memory: leave it,
		// and the ring, to it, and read this batch the slow way.
		abandon(r, *rb, names, lr.buf)
		lr.ring, lr.ringFailed, lr.rb, lr.buf = nil, true, ringBatch{}, nil
		lr.readEach(names)
		return true
	}

	for i, name := range names {
		s := r.queue()
		s.opcode, s.fd = uringOpOpenat, int32(lr.dirfd)
		s.addr = uint64(uintptr(unsafe.Pointer(unsafe.StringData(name))))
		s.opFlags = readFlags
		s.userData = uint64(i)
	}
	if r.submit(func(i uint64, v int32) { fds[i] = v }) != nil {
		return fail()
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
		return fail()
	}

	total := 0
	const closing = 1 << 32 // user data of a close: ignored
	for i, fd := range fds {
		if fd < 0 {
			continue
		}
		st := &stx[i]
		if res[i] == 0 && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o022 == 0 &&
			int64(st.Uid) == int64(lr.euid) && st.Size > 0 && st.Size <= MaxRecordSize {
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
		}
		res[i] = -1
		s := r.queue()
		s.opcode, s.fd = uringOpClose, fd
		s.userData = closing | uint64(i)
	}
	if r.submit(func(i uint64, v int32) {
		if i&closing == 0 {
			res[i] = v
		}
	}) != nil {
		return fail()
	}

	for i, name := range names {
		if datas[i] != nil && int(res[i]) == len(datas[i]) {
			lr.files = append(lr.files, readFile{data: datas[i]})
			continue
		}
		fd, err := openTerminated(lr.dirfd, name)
		data, err := readOpened(fd, err, lr.dir, name, nil, lr.euid)
		lr.files = append(lr.files, readFile{data, err})
	}
	if total > cap(lr.buf) {
		lr.buf = make([]byte, 0, min(total+total/4, maxListBufSize))
	}
	ringBatches.Add(1)
	return true
}

// releaseRing closes the reader's ring, if it has one.
func (lr *listReader) releaseRing() {
	if lr.ring != nil {
		lr.ring.close()
		lr.ring = nil
	}
}
