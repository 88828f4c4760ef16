package migrate

import (
	"errors"
	"io"
	"os"
	"sync/atomic"
	"unsafe"
)

// Sizes of the load feed: feedChunk bytes per read, feedBuffers chunks in
// flight between the reading and the writing goroutine, and the pipe's
// capacity asked for (Linux's default pipe-max-size).
const (
	feedChunk    = 2 << 20
	feedBuffers  = 3
	feedPipeSize = 1 << 20
	feedAlign    = 4096 // O_DIRECT alignment of buffers and offsets
)

// feedPipe copies src, from its start, into the pipe w until the end of
// src, a read error, or a write error (w closed by an abort, or QEMU
// closed its end), adding the bytes written to fed. It returns once
// nothing of it runs any more; errors are not returned: the load's status
// in QEMU says what a short stream did.
//
// The file is read with O_DIRECT where the file system takes it, into a few
// reused buffers, one goroutine reading the next chunks while this one
// writes: the page cache is neither filled with a file read once nor asked
// for hundreds of MiB of fresh pages, which on a host that takes free
// pages back (a VM with free page reporting) made buffered loads of the
// same file vary from 0.5 to 2.5 s. Where O_DIRECT is refused, or an
// offset stops being aligned, src is read through the page cache instead.
func feedPipe(w, src *os.File, fed *atomic.Uint64) {
	setPipeSize(w, feedPipeSize)
	direct, err := openDirect(src, os.O_RDONLY)
	if err != nil {
		direct = nil
	}
	type chunk struct {
		buf []byte
		n   int
	}
	free := make(chan []byte, feedBuffers)
	for range feedBuffers {
		free <- alignedBuffer(feedChunk, feedAlign)
	}
	full := make(chan chunk, feedBuffers)
	stop := make(chan struct{})
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(full)
		defer func() {
			if direct != nil {
				_ = direct.Close()
			}
		}()
		var off int64
		for {
			var buf []byte
			select {
			case buf = <-free:
			case <-stop:
				return
			}
			n, err := readChunk(direct, src, buf, off)
			if errors.Is(err, errNoDirect) {
				// Read the rest, from off, through the page cache.
				_ = direct.Close()
				direct = nil
				free <- buf
				continue
			}
			if n > 0 {
				select {
				case full <- chunk{buf, n}:
				case <-stop:
					return
				}
				off += int64(n)
			}
			if err != nil {
				return // io.EOF, or a read error: the stream ends here
			}
		}
	}()
	for c := range full {
		n, err := w.Write(c.buf[:c.n])
		fed.Add(uint64(n))
		if err != nil {
			break
		}
		free <- c.buf
	}
	close(stop)
	<-readDone
}

// errNoDirect: the file cannot be read on with O_DIRECT from here (an
// offset it refuses after a short read, or a file system that takes the
// open but not the read); nothing was read.
var errNoDirect = errors.New("no direct read at this offset")

// readChunk reads up to len(buf) bytes of the file at off, from direct
// when it is not nil (one read, which may be short), else from buffered.
// It returns io.EOF at the end of the file, and errNoDirect when the rest
// must be read from buffered.
func readChunk(direct, buffered *os.File, buf []byte, off int64) (int, error) {
	if direct != nil {
		if off%feedAlign != 0 {
			return 0, errNoDirect
		}
		n, err := preadOnce(direct, buf, off)
		switch {
		case err != nil:
			return 0, errNoDirect
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
	n, err := buffered.ReadAt(buf, off)
	if n > 0 && errors.Is(err, io.EOF) {
		err = nil
	}
	return n, err
}

// alignedBuffer returns n bytes starting at a multiple of align. Go's heap
// does not move objects, so the alignment lasts.
func alignedBuffer(n, align int) []byte {
	b := make([]byte, n+align)
	skip := 0
	if r := int(uintptrOf(b) % uintptr(align)); r != 0 {
		skip = align - r
	}
	return b[skip : skip+n : skip+n]
}

func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
