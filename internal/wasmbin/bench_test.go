package wasmbin

import "testing"

func BenchmarkDecodeReal(b *testing.B) {
	mods := realModules(b)
	data := readFile(b, mods[0])
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkInstrumentReal(b *testing.B) {
	mods := realModules(b)
	data := readFile(b, mods[0])
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, _, err := Instrument(data); err != nil {
			b.Fatal(err)
		}
	}
}
