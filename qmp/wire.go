package qmp

import (
	"encoding/json"
	"strconv"
)

// replyFields holds the raw top-level members of one line from QEMU that
// the reader looks at. Each is a sub-slice of the line (nil when absent).
type replyFields struct {
	id, ret, err, event, data, timestamp, greeting []byte
}

// scanLine splits a JSON object line into its top-level members without
// decoding them, so the reader does not pay for reflection or for validating
// a large "return" twice (Execute's json.Unmarshal validates it). It reports
// false for anything that is not a well-formed object at the top level.
func scanLine(b []byte, f *replyFields) bool {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return true
	}
	for {
		i = skipSpace(b, i)
		if i >= len(b) || b[i] != '"' {
			return false
		}
		end, ok := skipString(b, i)
		if !ok {
			return false
		}
		key := b[i+1 : end-1]
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = skipSpace(b, i+1)
		start := i
		if i, ok = skipValue(b, i); !ok {
			return false
		}
		v := b[start:i]
		switch string(key) {
		case "id":
			f.id = v
		case "return":
			f.ret = v
		case "error":
			f.err = v
		case "event":
			f.event = v
		case "data":
			f.data = v
		case "timestamp":
			f.timestamp = v
		case "QMP":
			f.greeting = v
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i++
		case '}':
			return true
		default:
			return false
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"'.
func skipString(b []byte, i int) (int, bool) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1, true
		}
	}
	return 0, false
}

// skipValue returns the index after the value starting at b[i].
func skipValue(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				end, ok := skipString(b, i)
				if !ok {
					return 0, false
				}
				i = end
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, true
				}
			}
			i++
		}
		return 0, false
	default:
		start := i
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				return i, i > start
			}
			i++
		}
		return i, i > start
	}
}

// jsonString decodes a JSON string value, cheaply when it has no escapes.
func jsonString(v []byte) (string, bool) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", false
	}
	inner := v[1 : len(v)-1]
	for _, c := range inner {
		if c == '\\' {
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return "", false
			}
			return s, true
		}
	}
	return string(inner), true
}

// parseID parses a reply id this client generated: a JSON string of
// decimal digits, such as "17". The client sends string ids because
// go-qemu's decoders (and other QMP tooling) declare the id a string.
func parseID(v []byte) (uint64, bool) {
	if len(v) < 3 || len(v) > 21 || v[0] != '"' || v[len(v)-1] != '"' {
		return 0, false
	}
	var n uint64
	for _, c := range v[1 : len(v)-1] {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// appendID appends id as the client writes it: a JSON string.
func appendID(b []byte, id uint64) []byte {
	b = append(b, '"')
	b = strconv.AppendUint(b, id, 10)
	return append(b, '"')
}
