package qmp_test

import (
	"bufio"
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	goqemuqmp "github.com/digitalocean/go-qemu/qmp"

	"github.com/vmsnap/vmsnap/qmp"
)

// BenchmarkQueryStatus measures one query-status round trip against the same
// real QEMU through: a minimal hand-written loop (write the request line,
// read one line), *qmp.Client, and go-qemu's SocketMonitor. Only one monitor
// connection exists at a time.
func BenchmarkQueryStatus(b *testing.B) {
	p := startQEMU(b)
	request := []byte(`{"execute":"query-status"}` + "\n")

	b.Run("RawLoop", func(b *testing.B) {
		conn, br := rawHandshake(b, p.sock)
		defer conn.Close()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := conn.Write(request); err != nil {
				b.Fatal(err)
			}
			if _, err := br.ReadSlice('\n'); err != nil {
				b.Fatal(err)
			}
		}
	})

	// The same loop sending the bytes the Client sends: QEMU itself takes
	// measurably longer over a request that carries an "id".
	b.Run("RawLoopWithID", func(b *testing.B) {
		conn, br := rawHandshake(b, p.sock)
		defer conn.Close()
		var buf []byte
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			buf = appendRequestWithID(buf[:0], uint64(i+2))
			if _, err := conn.Write(buf); err != nil {
				b.Fatal(err)
			}
			if _, err := br.ReadSlice('\n'); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("Client", func(b *testing.B) {
		c := benchDial(b, p.sock)
		defer c.Close()
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := c.Execute(ctx, "query-status", nil, nil); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("ClientDecodeCancelableCtx", func(b *testing.B) {
		c := benchDial(b, p.sock)
		defer c.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := qmp.QueryStatus(ctx, c); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("GoQEMUSocketMonitor", func(b *testing.B) {
		m, err := goqemuqmp.NewSocketMonitor("unix", p.sock, 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Connect(); err != nil {
			b.Fatal(err)
		}
		defer m.Disconnect()
		cmd := []byte(`{"execute":"query-status"}`)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := m.Run(cmd); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func benchDial(b *testing.B, sock string) *qmp.Client {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, "unix:"+sock)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// appendRequestWithID appends query-status with id as *qmp.Client writes it.
func appendRequestWithID(b []byte, id uint64) []byte {
	b = append(b, `{"execute":"query-status","id":`...)
	b = strconv.AppendUint(b, id, 10)
	return append(b, "}\n"...)
}

// rawHandshake connects by hand: read the greeting, negotiate, read the
// reply.
func rawHandshake(b *testing.B, sock string) (net.Conn, *bufio.Reader) {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	if _, err := br.ReadSlice('\n'); err != nil {
		b.Fatalf("greeting: %v", err)
	}
	if _, err := conn.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n")); err != nil {
		b.Fatal(err)
	}
	if _, err := br.ReadSlice('\n'); err != nil {
		b.Fatalf("qmp_capabilities: %v", err)
	}
	return conn, br
}

// BenchmarkQueryStatusInterleaved runs the same round trips against one QEMU
// with four monitors (raw loop, Client, go-qemu, raw loop with ids), alternating between them in short blocks so that
// load from elsewhere on the host affects all three alike. It reports each
// one's ns/op and the ratios to the raw loops.
func BenchmarkQueryStatusInterleaved(b *testing.B) {
	p := startQEMUMonitors(b, 4)
	conn, br := rawHandshake(b, p.socks[0])
	defer conn.Close()
	connID, brID := rawHandshake(b, p.socks[3])
	defer connID.Close()
	c := benchDial(b, p.socks[1])
	defer c.Close()
	m, err := goqemuqmp.NewSocketMonitor("unix", p.socks[2], 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Connect(); err != nil {
		b.Fatal(err)
	}
	defer m.Disconnect()

	request := []byte(`{"execute":"query-status"}` + "\n")
	cmd := []byte(`{"execute":"query-status"}`)
	ctx := context.Background()
	var buf []byte
	id := uint64(1)
	variants := []func() error{
		func() error {
			if _, err := conn.Write(request); err != nil {
				return err
			}
			_, err := br.ReadSlice('\n')
			return err
		},
		func() error { return c.Execute(ctx, "query-status", nil, nil) },
		func() error { _, err := m.Run(cmd); return err },
		func() error {
			id++
			buf = appendRequestWithID(buf[:0], id)
			if _, err := connID.Write(buf); err != nil {
				return err
			}
			_, err := brID.ReadSlice('\n')
			return err
		},
	}
	var spent [4]time.Duration
	const block = 50
	b.ResetTimer()
	for done := 0; done < b.N; done += block {
		n := min(block, b.N-done)
		for v, run := range variants {
			start := time.Now()
			for i := 0; i < n; i++ {
				if err := run(); err != nil {
					b.Fatal(err)
				}
			}
			spent[v] += time.Since(start)
		}
	}
	perOp := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N) }
	b.ReportMetric(perOp(spent[0]), "raw-ns/op")
	b.ReportMetric(perOp(spent[1]), "client-ns/op")
	b.ReportMetric(perOp(spent[2]), "goqemu-ns/op")
	b.ReportMetric(perOp(spent[3]), "rawid-ns/op")
	b.ReportMetric(float64(spent[1])/float64(spent[0]), "client/raw")
	b.ReportMetric(float64(spent[2])/float64(spent[0]), "goqemu/raw")
	b.ReportMetric(float64(spent[1])/float64(spent[3]), "client/rawid")
}
