package fakeqemu

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Options configure a fake QEMU.
type Options struct {
	// Profile selects the QEMU version to imitate; the zero value means
	// QEMU72.
	Profile Profile
	// Disks are the guest's disks, each a qcow2 format node attached to a
	// device. Node names must be unique.
	Disks []Disk
	// UUID is returned by query-uuid; empty means the all-zero UUID, as
	// QEMU reports when started without -uuid.
	UUID string
	// Paused starts the guest paused (query-status "paused").
	Paused bool
	// Prelaunch starts the guest as `qemu -S` does (query-status
	// "prelaunch"); it wins over Paused.
	Prelaunch bool
	// MemoryBytes is the guest RAM size: the migration "ram.total" and the
	// size of the stream migrate writes. Zero means 64 MiB.
	MemoryBytes int64
	// CounterAddr is the guest-physical address at which HMP `xp` shows
	// the guest counter (8 bytes, little endian). Zero means 0x7000.
	CounterAddr uint64
	// CreateOverlays makes blockdev-snapshot-sync create a small
	// placeholder file (mode 0644, like QEMU under umask 022) at the
	// overlay path, so callers can stat or chmod it. The file is not a
	// qcow2 image.
	CreateOverlays bool
}

// Disk describes one guest disk.
type Disk struct {
	// Node is the qcow2 format node name, e.g. "disk0".
	Node string
	// Device is the qdev id of the device using the node, e.g. "dev0";
	// query-block reports it as "/machine/peripheral/<Device>/virtio-backend".
	Device string
	// File is the qcow2 image path.
	File string
	// FileNode is the protocol ("file") node name; empty gives an
	// automatic "#blockNNN" name as QEMU does.
	FileNode string
	// Backing is the backing chain, nearest first: Backing[0] is File's
	// backing file, Backing[1] that file's backing file, and so on. Paths
	// may be relative to File's directory, as in a qcow2 header.
	Backing []string
	// VirtualSize is the image's virtual size in bytes; zero means 1 GiB.
	VirtualSize int64
}

// Server is a fake QEMU QMP monitor listening on a unix socket. It serves
// one client at a time: further connections are accepted but get their
// greeting only when the current client disconnects.
type Server struct {
	dir  string
	path string
	ln   *net.UnixListener

	mu     sync.Mutex
	opts   Options
	prof   Profile
	closed bool
	cur    *conn
	conns  map[*conn]struct{}
	wg     sync.WaitGroup

	// guest state
	status  string
	counter uint64
	blk     *blockState

	// command log, faults and scripted behaviour
	log        []string
	hmpLog     []string
	calls      map[string]int
	faults     []*faultState
	jobFaults  map[string]string
	drops      []*dropRule
	midJobDrop map[string]bool
	delays     map[string]time.Duration
	evBefore   map[string][]scriptedEvent

	jobs  map[string]*job
	jobOr []string

	fds   map[string]*os.File
	mig   *migration
	migCp map[string]bool
	migPr map[string]any
}

type scriptedEvent struct {
	name string
	data any
}

// Start starts a fake QEMU listening on a unix socket in a new temporary
// directory. Close stops it and removes the directory.
func Start(opts Options) (*Server, error) {
	if opts.Profile == (Profile{}) {
		opts.Profile = QEMU72
	}
	if opts.MemoryBytes == 0 {
		opts.MemoryBytes = 64 << 20
	}
	if opts.MemoryBytes < 16 {
		return nil, fmt.Errorf("fakeqemu: memory size %d is below 16 bytes", opts.MemoryBytes)
	}
	if opts.CounterAddr == 0 {
		opts.CounterAddr = 0x7000
	}
	if opts.UUID == "" {
		opts.UUID = "00000000-0000-0000-0000-000000000000"
	}
	s := &Server{
		opts:       opts,
		prof:       opts.Profile,
		conns:      map[*conn]struct{}{},
		calls:      map[string]int{},
		jobFaults:  map[string]string{},
		midJobDrop: map[string]bool{},
		delays:     map[string]time.Duration{},
		evBefore:   map[string][]scriptedEvent{},
		jobs:       map[string]*job{},
		fds:        map[string]*os.File{},
		migCp:      map[string]bool{},
		migPr:      defaultMigrationParameters(),
		status:     "running",
		blk:        &blockState{nodeSeq: 100},
	}
	switch {
	case opts.Prelaunch:
		s.status = "prelaunch"
	case opts.Paused:
		s.status = "paused"
	}
	seen := map[string]bool{}
	for _, d := range opts.Disks {
		if d.Node == "" || d.File == "" {
			return nil, fmt.Errorf("fakeqemu: disk %q: node and file are required", d.Node)
		}
		if seen[d.Node] || (d.FileNode != "" && seen[d.FileNode]) {
			return nil, fmt.Errorf("fakeqemu: disk %q: duplicate node name", d.Node)
		}
		seen[d.Node] = true
		if d.FileNode != "" {
			seen[d.FileNode] = true
		}
		s.blk.addDisk(d)
	}
	dir, err := os.MkdirTemp("", "fakeqemu-")
	if err != nil {
		return nil, fmt.Errorf("fakeqemu: create socket directory: %w", err)
	}
	s.dir = dir
	s.path = filepath.Join(dir, "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.path, Net: "unix"})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("fakeqemu: listen on %s: %w", s.path, err)
	}
	s.ln = ln
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// Addr returns the path of the QMP unix socket.
func (s *Server) Addr() string { return s.path }

// Close stops the server, closes every connection and file descriptor it
// holds, waits for its goroutines and removes its temporary directory. It
// is safe to call more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for c := range s.conns {
		c.close()
	}
	for name, f := range s.fds {
		f.Close()
		delete(s.fds, name)
	}
	if s.mig != nil {
		s.mig.stop()
	}
	s.mu.Unlock()
	err := s.ln.Close()
	s.wg.Wait()
	if rerr := os.RemoveAll(s.dir); err == nil {
		err = rerr
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("fakeqemu: close: %w", err)
	}
	return nil
}

// acceptLoop accepts clients and serves them strictly one after another,
// like a QEMU chardev monitor: a waiting client gets no greeting.
func (s *Server) acceptLoop() {
	defer s.wg.Done()
	queue := make(chan *conn, 64)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for c := range queue {
			s.serve(c)
		}
	}()
	defer close(queue)
	for {
		uc, err := s.ln.AcceptUnix()
		if err != nil {
			return
		}
		c := newConn(uc)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		select {
		case queue <- c:
		default:
			c.close() // too many waiting clients
		}
	}
}

// conn is one client connection.
type conn struct {
	uc         *net.UnixConn
	negotiated bool

	fdMu sync.Mutex
	fds  []*os.File // received with SCM_RIGHTS, not yet claimed by getfd

	outMu  sync.Mutex
	out    [][]byte
	outCnd *sync.Cond
	done   bool
	wdone  chan struct{}
}

func newConn(uc *net.UnixConn) *conn {
	c := &conn{uc: uc, wdone: make(chan struct{})}
	c.outCnd = sync.NewCond(&c.outMu)
	go c.writeLoop()
	return c
}

// send queues one message; it never blocks, so events can be emitted while
// the server lock is held.
func (c *conn) send(msg any) {
	b, err := json.Marshal(msg)
	if err != nil {
		panic(fmt.Sprintf("fakeqemu: marshal %T: %v", msg, err))
	}
	b = append(b, '\r', '\n')
	c.outMu.Lock()
	if !c.done {
		c.out = append(c.out, b)
		c.outCnd.Signal()
	}
	c.outMu.Unlock()
}

func (c *conn) writeLoop() {
	defer close(c.wdone)
	for {
		c.outMu.Lock()
		for len(c.out) == 0 && !c.done {
			c.outCnd.Wait()
		}
		if len(c.out) == 0 && c.done {
			c.outMu.Unlock()
			return
		}
		b := c.out[0]
		c.out = c.out[1:]
		c.outMu.Unlock()
		if _, err := c.uc.Write(b); err != nil {
			c.outMu.Lock()
			c.done = true
			c.out = nil
			c.outMu.Unlock()
			return
		}
	}
}

// flush waits until queued messages are written (or the connection died).
func (c *conn) flush() {
	for {
		c.outMu.Lock()
		n, done := len(c.out), c.done
		c.outMu.Unlock()
		if n == 0 || done {
			return
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// close shuts the connection down at once, dropping unsent output.
func (c *conn) close() {
	c.outMu.Lock()
	c.done = true
	c.out = nil
	c.outCnd.Signal()
	c.outMu.Unlock()
	c.uc.Close()
	c.fdMu.Lock()
	for _, f := range c.fds {
		f.Close()
	}
	c.fds = nil
	c.fdMu.Unlock()
}

// Read implements io.Reader, collecting file descriptors passed with
// SCM_RIGHTS alongside the bytes.
func (c *conn) Read(p []byte) (int, error) {
	oob := make([]byte, syscall.CmsgSpace(16*4))
	n, oobn, _, _, err := c.uc.ReadMsgUnix(p, oob)
	if oobn > 0 {
		if msgs, perr := syscall.ParseSocketControlMessage(oob[:oobn]); perr == nil {
			for _, m := range msgs {
				fds, rerr := syscall.ParseUnixRights(&m)
				if rerr != nil {
					continue
				}
				c.fdMu.Lock()
				for _, fd := range fds {
					c.fds = append(c.fds, os.NewFile(uintptr(fd), fmt.Sprintf("fd%d", fd)))
				}
				c.fdMu.Unlock()
			}
		}
	}
	return n, err
}

// takeFD claims the most recently received descriptor, as QEMU's getfd
// does, and closes any older ones.
func (c *conn) takeFD() *os.File {
	c.fdMu.Lock()
	defer c.fdMu.Unlock()
	if len(c.fds) == 0 {
		return nil
	}
	f := c.fds[len(c.fds)-1]
	for _, old := range c.fds[:len(c.fds)-1] {
		old.Close()
	}
	c.fds = nil
	return f
}

// serve runs one client session until it disconnects.
func (s *Server) serve(c *conn) {
	defer func() {
		s.mu.Lock()
		if s.cur == c {
			s.cur = nil
		}
		delete(s.conns, c)
		s.mu.Unlock()
		c.flush()
		c.close()
		<-c.wdone
	}()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.cur = c
	c.send(map[string]any{"QMP": map[string]any{
		"version":      s.versionInfo(),
		"capabilities": []string{"oob"},
	}})
	s.mu.Unlock()

	var r io.Reader = c
	dec := json.NewDecoder(r)
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if err != nil {
			var se *json.SyntaxError
			if !errors.As(err, &se) {
				return
			}
			c.send(errorReply(nil, "GenericError", "JSON parse error, "+se.Error()))
			// Resynchronise after the next newline.
			rest, _ := io.ReadAll(dec.Buffered())
			if i := bytes.IndexByte(rest, '\n'); i >= 0 {
				rest = rest[i+1:]
			} else {
				rest = nil
			}
			dec = json.NewDecoder(io.MultiReader(bytes.NewReader(rest), r))
			continue
		}
		if !s.handle(c, raw) {
			return
		}
	}
}

func errorReply(id json.RawMessage, class, desc string) map[string]any {
	m := map[string]any{"error": map[string]string{"class": class, "desc": desc}}
	if id != nil {
		m["id"] = id
	}
	return m
}

// emit sends an event to the current negotiated client; s.mu must be held.
// Like QEMU, events with no listening client are lost.
func (s *Server) emit(name string, data any) {
	if s.cur == nil || !s.cur.negotiated {
		return
	}
	now := time.Now()
	m := map[string]any{
		"timestamp": map[string]int64{"seconds": now.Unix(), "microseconds": int64(now.Nanosecond() / 1000)},
		"event":     name,
	}
	if data != nil {
		m["data"] = data
	}
	s.cur.send(m)
}

func (s *Server) versionInfo() map[string]any {
	return map[string]any{
		"qemu":    map[string]int{"major": s.prof.Major, "minor": s.prof.Minor, "micro": s.prof.Micro},
		"package": s.prof.Package,
	}
}
