package migrate

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestFeedPipe: the pipe carries the file byte for byte, whatever its size
// against the chunk and O_DIRECT's alignment, and fed ends at its size.
func TestFeedPipe(t *testing.T) {
	for _, size := range []int{0, 1, feedAlign, feedChunk - 1, feedChunk, 3*feedChunk + 12345} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rand.IntN(256))
		}
		f := feedFile(t, data)
		pr, pw := feedPipeEnds(t)
		var fed atomic.Uint64
		go func() {
			feedPipe(pw, f, &fed)
			pw.Close()
		}()
		got, err := io.ReadAll(pr)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("size %d: the pipe carried %d bytes that differ from the file", size, len(got))
		}
		if fed.Load() != uint64(size) {
			t.Errorf("size %d: fed %d", size, fed.Load())
		}
	}
}

// TestFeedPipeAbort: closing the pipe's write end while the reader has
// stopped reading (QEMU stuck, or a cancelled load) ends the feed.
func TestFeedPipeAbort(t *testing.T) {
	f := feedFile(t, make([]byte, 8*feedChunk))
	_, pw := feedPipeEnds(t)
	var fed atomic.Uint64
	closeW := sync.OnceFunc(func() { pw.Close() })
	done := make(chan struct{})
	go func() {
		defer close(done)
		feedPipe(pw, f, &fed)
	}()
	// Nothing reads: the feed blocks once the pipe is full.
	time.Sleep(100 * time.Millisecond)
	closeW()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the feed did not end after its pipe was closed")
	}
	if n := fed.Load(); n >= 8*feedChunk {
		t.Errorf("fed %d bytes into a pipe nobody read", n)
	}
}

// TestReadChunkFallsBack: a direct read that fails (here a descriptor
// that cannot be read, as a file system that takes O_DIRECT's open but
// not its reads) or would start at an unaligned offset reads nothing and
// says to go on through the page cache, from the same offset.
func TestReadChunkFallsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mem")
	data := bytes.Repeat([]byte("0123456789abcdef"), 1024)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	buffered, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { buffered.Close() })
	unreadable, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unreadable.Close() })
	buf := alignedBuffer(feedChunk, feedAlign)
	for _, tc := range []struct {
		what string
		off  int64
	}{{"a failing read", 0}, {"an unaligned offset", 100}} {
		if n, err := readChunk(unreadable, buffered, buf, tc.off); n != 0 || !errors.Is(err, errNoDirect) {
			t.Errorf("%s: read %d, %v; want 0 and errNoDirect", tc.what, n, err)
		}
		n, err := readChunk(nil, buffered, buf, tc.off)
		if err != nil || !bytes.Equal(buf[:n], data[tc.off:]) {
			t.Errorf("%s: the buffered read from %d gave %d bytes, %v", tc.what, tc.off, n, err)
		}
	}
	if n, err := readChunk(nil, buffered, buf, int64(len(data))); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("at the end: %d, %v; want io.EOF", n, err)
	}
}

// feedFile writes data to a new file and returns it open for reading.
func feedFile(t *testing.T, data []byte) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mem")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// feedPipeEnds returns a new pipe; its read end closes with the test.
func feedPipeEnds(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, w
}
