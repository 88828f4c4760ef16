//go:build linux || darwin || freebsd

package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// listBatchSize is the number of record files handed to a reader at a
// time: small enough that the readers finish together, large enough that
// handing them out costs nothing.
const listBatchSize = 128

// List implements Store. It ignores files that are not records (memory
// files, current.xl, .lock, temporary files). Each record file that cannot
// be trusted (unsafe permissions, a foreign owner, corrupt content, a name
// that does not match its file name) is left out and reported in the
// returned error, which wraps an errors.Join of one *RecordError per file,
// in directory order, each naming its file (see RecordErrors); the good
// records are returned with it. An error about the domain's directory
// itself comes without records and is not a *RecordError.
//
// Every record file is opened, checked and read on each call: nothing is
// cached. The directory is read in large chunks while one reader per CPU
// (GOMAXPROCS) already reads, parses and sorts the record files named so
// far. On Linux a reader hands the opens, stats, reads and closes of a
// batch to the kernel through io_uring where the kernel allows it, and
// makes them one by one where it does not; both give the same records and
// errors. The records of one call share a few larger memory blocks, so a
// record kept after the others are dropped keeps up to a few tens of KiB
// alive.
func (s *FileStore) List(ctx context.Context, domain string) ([]*Record, error) {
	if err := ValidateDomain(domain); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dirfd, dir, err := s.openDir(domain, false)
	if err != nil {
		return nil, err
	}
	if dirfd < 0 {
		return []*Record{}, nil
	}
	defer unix.Close(dirfd)
	out, errs, err := listDir(ctx, domain, dirfd, dir)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("store: domain %s: some snapshot records cannot be read: %w", domain, errors.Join(errs...))
	}
	return out, nil
}

// listBatch is a run of record file names, the first of them the index'th
// record file of the directory.
type listBatch struct {
	index int
	names []string
}

// listed is what one reader of listDir found: its records (as their sort
// keys, sorted once it is done) and the record files it could not read.
type listed struct {
	keys []recordKey
	errs []listError
}

// listError is the *RecordError of the index'th record file.
type listError struct {
	index int
	err   *RecordError
}

// listDir reads every record file of the domain's directory dirfd: the
// records, sorted by creation time then name (each reader sorts its own,
// then they are merged), and one *RecordError per record file that cannot
// be read, in directory order. Record files removed while it runs are left
// out. The error is about the directory itself.
func listDir(ctx context.Context, domain string, dirfd int, dir string) ([]*Record, []error, error) {
	// A fresh open file description, so that concurrent listings do not
	// share a directory offset.
	fd, err := openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("store: domain %s: %w", domain, &os.PathError{Op: "open", Path: dir, Err: err})
	}
	defer unix.Close(fd)
	results := make([]listed, runtime.GOMAXPROCS(0))
	euid := os.Geteuid()
	reader := func(res *listed) listReader {
		return listReader{domain: domain, dir: dir, dirfd: dirfd, euid: euid, res: res}
	}
	// The readers start with the second batch: a directory of one batch
	// (most domains, and every operation's reconcile) is read on this
	// goroutine, without their start-up cost.
	var (
		wg      sync.WaitGroup
		batches chan listBatch
		first   *listBatch
	)
	emit := func(b listBatch) {
		if batches == nil {
			if first == nil {
				first = &b
				return
			}
			batches = make(chan listBatch, 2*len(results))
			for i := range results {
				wg.Add(1)
				go func(res *listed) {
					defer wg.Done()
					lr := reader(res)
					for b := range batches {
						if ctx.Err() != nil {
							continue // drain: the directory reader stops soon
						}
						lr.batch(b)
					}
					slices.SortFunc(res.keys, compareKeys)
				}(&results[i])
			}
			batches <- *first
		}
		batches <- b
	}
	err = readRecordNames(ctx, fd, dir, emit)
	if batches != nil {
		close(batches)
		wg.Wait()
	} else if first != nil && err == nil && ctx.Err() == nil {
		lr := reader(&results[0])
		lr.batch(*first)
		slices.SortFunc(results[0].keys, compareKeys)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("store: domain %s: %w", domain, err)
	}
	runs := make([][]recordKey, 0, len(results))
	var lerrs []listError
	for _, res := range results {
		runs = append(runs, res.keys)
		lerrs = append(lerrs, res.errs...)
	}
	out := mergeKeys(runs)
	slices.SortFunc(lerrs, func(a, b listError) int { return a.index - b.index })
	var errs []error
	for _, e := range lerrs {
		errs = append(errs, e.err)
	}
	return out, errs, nil
}

// listReader is one of listDir's readers. It reads the files of a batch
// into one buffer, then parses them one after the other: the system calls
// of a batch run back to back (through io_uring where it can, see
// readRing), and so does the parsing, each with its code and data warm in
// the caches, rather than every record's parse following its file's four
// system calls.
type listReader struct {
	domain, dir string
	dirfd, euid int
	res         *listed
	blocks      recordBlocks
	// buf holds the files of the batch being read, back to back; a file
	// that does not fit in what is left gets its own memory, and the next
	// batch a larger buf.
	buf   []byte
	files []readFile
	// rb is the memory readRing has the kernel read into.
	rb ringBatch
}

// readFile is a record file of a batch, as read.
type readFile struct {
	data []byte
	err  error
}

const (
	// listBufSize is the largest initial size of a listReader's buffer: a
	// batch of records of a few hundred bytes each.
	listBufSize = 128 << 10
	// listBytesPerRecord sizes a smaller first batch's buffer.
	listBytesPerRecord = 2 << 10
	// maxListBufSize bounds it.
	maxListBufSize = 4 << 20
)

// batch reads and parses the record files of b.
func (lr *listReader) batch(b listBatch) {
	if lr.buf == nil {
		// Sized for the batch: a small domain's listing (every
		// operation's reconcile) does not pay for a large buffer.
		lr.buf = make([]byte, 0, min(listBufSize, len(b.names)*listBytesPerRecord))
	}
	lr.buf = lr.buf[:0]
	lr.files = lr.files[:0]
	if !lr.readRing(b.names) {
		lr.readEach(b.names)
	}
	for j, f := range lr.files {
		name := b.names[j]
		var r *Record
		err := f.err
		if err == nil {
			r, err = parseRecordFile(f.data, lr.dir, name, &lr.blocks)
		}
		switch {
		case err == nil:
			lr.res.keys = append(lr.res.keys, keyOf(r))
		case errors.Is(err, fs.ErrNotExist):
			// Deleted since the directory was read.
		default:
			lr.res.errs = append(lr.res.errs, listError{b.index + j, recordError(lr.domain, lr.dir, name, err)})
		}
	}
	clear(lr.files) // drop the files that had memory of their own
}

// readEach reads the record files names into lr.files, one after the
// other, each with its own system calls (open, fstat, read, close).
func (lr *listReader) readEach(names []string) {
	total := 0
	for _, name := range names {
		fd, err := openWaiting(lr.dirfd, name)
		room := lr.buf[len(lr.buf):]
		data, err := readOpened(fd, err, lr.dir, name, room, lr.euid)
		if err == nil {
			total += len(data)
			if len(data) > 0 && cap(room) > 0 && &data[0] == &room[:1][0] {
				lr.buf = lr.buf[:len(lr.buf)+len(data)]
			}
		}
		lr.files = append(lr.files, readFile{data, err})
	}
	lr.fit(total)
}

// fit gives the next batch a buffer that holds total bytes of files, if
// the one it has does not (up to maxListBufSize).
func (lr *listReader) fit(total int) {
	if total > cap(lr.buf) {
		lr.buf = make([]byte, 0, min(total+total/4, maxListBufSize))
	}
}

// readRecordNames reads the directory fd in large chunks and gives emit
// the names of its record files, in directory order, in batches of at most
// listBatchSize. It stops early, without an error, when ctx is done.
//
// The names of a batch are carved from a few larger blocks, each name
// followed by a NUL byte (so that openTerminated passes it to the kernel
// as it is), and never written again once sent.
func readRecordNames(ctx context.Context, fd int, dir string, emit func(listBatch)) error {
	buf := make([]byte, 32<<10)
	var (
		block []byte
		batch []string
		index int
	)
	each := func(name []byte) {
		if len(name) == 0 || !isRecordFileName(unsafe.String(unsafe.SliceData(name), len(name))) {
			return
		}
		if cap(block)-len(block) < len(name)+1 {
			block = make([]byte, 0, max(8<<10, len(name)+1))
		}
		start := len(block)
		block = append(append(block, name...), 0) // within cap: earlier names stay
		if batch == nil {
			batch = make([]string, 0, listBatchSize)
		}
		if batch = append(batch, unsafe.String(&block[start], len(name))); len(batch) == listBatchSize {
			emit(listBatch{index: index, names: batch})
			index += len(batch)
			batch = nil
		}
	}
	for ctx.Err() == nil {
		n, err := unix.ReadDirent(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "readdirent", Path: dir, Err: err}
		}
		if n <= 0 {
			break
		}
		direntNames(buf[:n], each)
	}
	if len(batch) > 0 {
		emit(listBatch{index: index, names: batch})
	}
	return nil
}
