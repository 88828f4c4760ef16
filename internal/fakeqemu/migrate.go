package fakeqemu

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"
)

// StreamMagic starts every fake migration stream: the magic, a big-endian
// version 3 (as in QEMU's savevm format), zero filler, and as the last 8
// bytes the guest counter (little endian) as the stream captured it. The
// stream is Options.MemoryBytes long.
const StreamMagic = "QEVM"

// migration is an outgoing migration to a passed file descriptor.
type migration struct {
	status      string
	background  bool
	errDesc     string
	total       int64
	transferred int64
	start       time.Time
	setupMs     int64
	totalMs     int64
	downtimeMs  int64
	cancel      chan struct{}
	once        sync.Once
}

func (m *migration) stop() { m.once.Do(func() { close(m.cancel) }) }

func (m *migration) running() bool { return m.status == "setup" || m.status == "active" }

func migrationCapabilities(p Profile) []string {
	caps := []string{"xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress",
		"events", "postcopy-ram", "x-colo", "release-ram", "block", "return-path",
		"pause-before-switchover", "multifd", "dirty-bitmaps", "postcopy-blocktime",
		"late-block-activate", "x-ignore-shared", "validate-uuid"}
	if p.BackgroundSnapshot {
		caps = append(caps, "background-snapshot")
	}
	if p.Major >= 7 {
		caps = append(caps, "zero-copy-send", "postcopy-preempt")
	}
	return caps
}

func defaultMigrationParameters() map[string]any {
	return map[string]any{
		"cpu-throttle-tailslow": false, "xbzrle-cache-size": 67108864, "cpu-throttle-initial": 20,
		"announce-max": 550, "decompress-threads": 2, "compress-threads": 8, "compress-level": 1,
		"multifd-channels": 2, "multifd-zstd-level": 1, "announce-initial": 50,
		"block-incremental": false, "compress-wait-thread": true, "downtime-limit": 300,
		"tls-authz": "", "multifd-compression": "none", "announce-rounds": 5, "announce-step": 100,
		"tls-creds": "", "multifd-zlib-level": 1, "max-cpu-throttle": 99,
		"max-postcopy-bandwidth": 0, "tls-hostname": "", "throttle-trigger-threshold": 50,
		"max-bandwidth": 134217728, "x-checkpoint-delay": 20000, "cpu-throttle-increment": 10,
	}
}

func cmdGetfd(s *Server, x *call) (any, *qerr) {
	var a struct {
		FDName string `json:"fdname"`
	}
	if e := x.decode(&a, "fdname"); e != nil {
		return nil, e
	}
	f := x.c.takeFD()
	if f == nil {
		return nil, generic("No file descriptor supplied via SCM_RIGHTS")
	}
	if a.FDName == "" || unicode.IsDigit(rune(a.FDName[0])) {
		f.Close()
		return nil, generic("Parameter 'fdname' expects a name not starting with a digit")
	}
	if old, ok := s.fds[a.FDName]; ok {
		old.Close()
	}
	s.fds[a.FDName] = f
	return struct{}{}, nil
}

func cmdClosefd(s *Server, x *call) (any, *qerr) {
	var a struct {
		FDName string `json:"fdname"`
	}
	if e := x.decode(&a, "fdname"); e != nil {
		return nil, e
	}
	f, ok := s.fds[a.FDName]
	if !ok {
		return nil, generic("File descriptor named '%s' not found", a.FDName)
	}
	f.Close()
	delete(s.fds, a.FDName)
	return struct{}{}, nil
}

func (s *Server) migrationEvent(status string) {
	if s.migCp["events"] {
		s.emit("MIGRATION", map[string]string{"status": status})
	}
}

func cmdMigrate(s *Server, x *call) (any, *qerr) {
	var a struct {
		URI    string `json:"uri"`
		Blk    bool   `json:"blk"`
		Inc    bool   `json:"inc"`
		Detach bool   `json:"detach"`
		Resume bool   `json:"resume"`
	}
	if e := x.decode(&a, "uri"); e != nil {
		return nil, e
	}
	if s.mig != nil && s.mig.running() {
		return nil, generic("There's a migration process in progress")
	}
	if s.status == "postmigrate" {
		return nil, generic("Can't migrate the vm that was paused due to previous migration")
	}
	name, ok := strings.CutPrefix(a.URI, "fd:")
	if !ok {
		return nil, generic("fakeqemu simulates only fd: migration URIs, not '%s'", a.URI)
	}
	m := &migration{status: "setup", background: s.migCp["background-snapshot"],
		total: s.opts.MemoryBytes, start: time.Now(), cancel: make(chan struct{})}
	s.mig = m
	s.migrationEvent("setup")
	f, ok := s.fds[name]
	if !ok {
		m.status = "failed"
		m.errDesc = "File descriptor named '" + name + "' has not been found"
		s.migrationEvent("failed")
		return nil, generic("%s", m.errDesc)
	}
	delete(s.fds, name) // QEMU takes the descriptor over and closes it
	var bw int64
	switch v := s.migPr["max-bandwidth"].(type) {
	case int:
		bw = int64(v)
	case int64:
		bw = v
	}
	x.after = append(x.after, func() {
		s.wg.Add(1)
		go s.runMigration(m, f, bw)
	})
	return struct{}{}, nil
}

// runMigration writes the fake stream to f at up to bw bytes/s (0 or
// more than 1 TiB/s means unlimited) and drives the state machine.
func (s *Server) runMigration(m *migration, f *os.File, bw int64) {
	defer s.wg.Done()
	defer f.Close()
	s.mu.Lock()
	if m.status == "cancelling" {
		m.status = "cancelled"
		s.migrationEvent("cancelled")
		s.mu.Unlock()
		return
	}
	if m.background {
		// Background snapshot: the guest stops only while the
		// write-protection is set up, then runs on.
		if s.status == "running" {
			s.stopGuest("paused")
			s.startGuest()
		}
	}
	m.status = "active"
	m.setupMs = time.Since(m.start).Milliseconds()
	s.emitPass(1)
	s.migrationEvent("active")
	var counter [8]byte
	binary.LittleEndian.PutUint64(counter[:], s.counter) // background: the state at the start
	s.mu.Unlock()

	const chunk = 256 << 10
	buf := make([]byte, chunk)
	copy(buf, StreamMagic)
	binary.BigEndian.PutUint32(buf[4:], 3)
	began := time.Now()
	body := m.total - 8
	var sent int64
	write := func(p []byte) bool {
		if _, err := f.Write(p); err != nil {
			s.mu.Lock()
			defer s.mu.Unlock()
			m.status, m.errDesc = "failed", "Unable to write to file: "+err.Error()
			s.migrationEvent("failed")
			return false
		}
		sent += int64(len(p))
		s.mu.Lock()
		m.transferred = sent
		s.mu.Unlock()
		return true
	}
	for sent < body {
		select {
		case <-m.cancel:
			s.mu.Lock()
			m.status = "cancelled"
			s.migrationEvent("cancelled")
			s.mu.Unlock()
			return
		default:
		}
		if !write(buf[:min(int64(chunk), body-sent)]) {
			return
		}
		clear(buf[:8]) // the header goes only into the first chunk
		if bw > 0 && bw < 1<<40 {
			want := time.Duration(float64(sent) / float64(bw) * float64(time.Second))
			if d := want - time.Since(began); d > 0 {
				select {
				case <-time.After(d):
				case <-m.cancel:
				}
			}
		}
	}
	// Final pass: a pre-copy migration stops the guest and the stream
	// ends with the counter at that instant.
	s.mu.Lock()
	if !m.background {
		s.stopGuest("finish-migrate")
		binary.LittleEndian.PutUint64(counter[:], s.counter)
	}
	s.emitPass(2)
	s.mu.Unlock()
	if !write(counter[:]) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m.status = "completed"
	m.totalMs = time.Since(m.start).Milliseconds()
	m.downtimeMs = 1
	if !m.background {
		s.status = "postmigrate"
	}
	s.migrationEvent("completed")
}

func (s *Server) emitPass(n int) {
	if s.migCp["events"] {
		s.emit("MIGRATION_PASS", map[string]int{"pass": n})
	}
}

func cmdMigrateCancel(s *Server, x *call) (any, *qerr) {
	if e := x.decode(nil); e != nil {
		return nil, e
	}
	if s.mig != nil && s.mig.running() {
		s.mig.status = "cancelling"
		s.migrationEvent("cancelling")
		s.mig.stop()
	}
	return struct{}{}, nil
}

func cmdQueryMigrate(s *Server, x *call) (any, *qerr) {
	if e := x.decode(nil); e != nil {
		return nil, e
	}
	m := s.mig
	if m == nil {
		return struct{}{}, nil
	}
	elapsed := time.Since(m.start)
	ram := func() map[string]any {
		mbps := 0.0
		if secs := elapsed.Seconds(); secs > 0 {
			mbps = float64(m.transferred) * 8 / 1e6 / secs
		}
		return map[string]any{
			"total": m.total, "postcopy-requests": 0, "dirty-sync-count": 1, "multifd-bytes": 0,
			"pages-per-second": 0, "downtime-bytes": 0, "page-size": 4096,
			"remaining": m.total - m.transferred, "postcopy-bytes": 0, "mbps": mbps,
			"transferred": m.transferred, "dirty-sync-missed-zero-copy": 0,
			"precopy-bytes": m.transferred, "duplicate": 0, "dirty-pages-rate": 0,
			"skipped": 0, "normal-bytes": m.transferred, "normal": m.transferred / 4096,
		}
	}
	switch m.status {
	case "active":
		return map[string]any{"expected-downtime": 300, "status": "active", "setup-time": m.setupMs,
			"total-time": elapsed.Milliseconds(), "ram": ram()}, nil
	case "completed":
		return map[string]any{"status": "completed", "setup-time": m.setupMs, "downtime": m.downtimeMs,
			"total-time": m.totalMs, "ram": ram()}, nil
	case "failed":
		return map[string]any{"status": "failed", "error-desc": m.errDesc}, nil
	default:
		return map[string]any{"status": m.status}, nil
	}
}

func cmdMigrateSetCapabilities(s *Server, x *call) (any, *qerr) {
	var a struct {
		Capabilities []struct {
			Capability string `json:"capability"`
			State      bool   `json:"state"`
		} `json:"capabilities"`
	}
	if e := x.decode(&a, "capabilities"); e != nil {
		return nil, e
	}
	known := map[string]bool{}
	for _, c := range migrationCapabilities(s.prof) {
		known[c] = true
	}
	for _, c := range a.Capabilities {
		if !known[c.Capability] {
			return nil, generic("Parameter 'capability' does not accept value '%s'", c.Capability)
		}
	}
	if s.mig != nil && s.mig.running() {
		return nil, generic("There's a migration process in progress")
	}
	for _, c := range a.Capabilities {
		s.migCp[c.Capability] = c.State
	}
	return struct{}{}, nil
}

func cmdQueryMigrateCapabilities(s *Server, x *call) (any, *qerr) {
	if e := x.decode(nil); e != nil {
		return nil, e
	}
	out := []map[string]any{}
	for _, c := range migrationCapabilities(s.prof) {
		out = append(out, map[string]any{"state": s.migCp[c], "capability": c})
	}
	return out, nil
}

func cmdMigrateSetParameters(s *Server, x *call) (any, *qerr) {
	var a map[string]json.RawMessage
	if e := x.decode(&a); e != nil {
		return nil, e
	}
	for k, v := range a {
		old, ok := s.migPr[k]
		if !ok {
			return nil, generic("Parameter '%s' is unexpected", k)
		}
		switch old.(type) {
		case int, int64:
			var n int64
			if err := json.Unmarshal(v, &n); err != nil || n < 0 {
				return nil, generic("Invalid parameter type for '%s', expected: integer", k)
			}
			s.migPr[k] = n
		case bool:
			var b bool
			if err := json.Unmarshal(v, &b); err != nil {
				return nil, generic("Invalid parameter type for '%s', expected: boolean", k)
			}
			s.migPr[k] = b
		default:
			var str string
			if err := json.Unmarshal(v, &str); err != nil {
				return nil, generic("Invalid parameter type for '%s', expected: string", k)
			}
			s.migPr[k] = str
		}
	}
	return struct{}{}, nil
}

func cmdQueryMigrateParameters(s *Server, x *call) (any, *qerr) {
	if e := x.decode(nil); e != nil {
		return nil, e
	}
	out := map[string]any{}
	for k, v := range s.migPr {
		out[k] = v
	}
	return out, nil
}
