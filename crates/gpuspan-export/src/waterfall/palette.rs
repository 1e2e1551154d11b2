//! Stage colours and stage characters, shared by the terminal and the HTML waterfall so a
//! stage looks the same in both.
//!
//! The stages DESIGN.md names ("Stage classification") have fixed colours and letters; any
//! other stage (a custom rules file's class) gets the next spare colour and a free
//! character derived from its name. Characters are ASCII, distinct within one palette, and
//! never `.` / `|` / space (the terminal's idle cell and frame).

/// How one stage is drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageStyle {
    /// The stage name.
    pub stage: String,
    /// Colour, `#rrggbb`.
    pub colour: String,
    /// Its (r, g, b) bytes.
    pub rgb: [u8; 3],
    /// Printable ASCII character drawn for the stage in the terminal.
    pub symbol: char,
}

/// Fixed (stage, colour, symbol) for the DESIGN.md stages and the built-in rules' classes
/// (`gpuspan-core/rules/stages.toml`).
const KNOWN: &[(&str, &str, char)] = &[
    ("attention.spatial", "#4e79a7", 'S'),
    ("attention.temporal", "#59a14f", 'T'),
    ("attention.cross", "#b07aa1", 'X'),
    ("attention", "#76b7b2", 'A'),
    ("ffn", "#f28e2b", 'F'),
    ("gemm", "#edc948", 'G'),
    ("norm", "#e15759", 'N'),
    ("elementwise", "#9c755f", 'E'),
    ("conv", "#d37295", 'K'),
    ("communication", "#499894", 'C'),
    ("embedding", "#86bcb6", 'D'),
    ("optimizer", "#b6992d", 'O'),
    ("sort", "#d4a6c8", 'R'),
    ("moe", "#8f6b9e", 'Q'),
    ("vae.decode", "#ff9da7", 'V'),
    ("memcpy", "#bab0ac", 'M'),
    ("memset", "#8cd17d", 'Z'),
    ("other", "#79706e", 'o'),
];

/// Colours for stages outside [`KNOWN`], in order of appearance.
const SPARE: &[&str] = &["#a0cbe8", "#ffbe7d", "#fabfd2", "#6b8e23", "#c49c94", "#17becf", "#bcbd22", "#aec7e8"];

/// Fallback characters once a stage's own letters are taken.
const FALLBACK_SYMBOLS: &str = "0123456789#@%&*+=?!~^$";

fn parse_hex(hex: &str) -> [u8; 3] {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap_or(0x888888);
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

/// The styles of `stages` (in that order): known stages keep their fixed colour and symbol,
/// the others get spare colours (cycling) and the first free character among their name's
/// letters (upper case first), then digits and punctuation.
pub fn styles(stages: &[String]) -> Vec<StageStyle> {
    let mut used: Vec<char> = stages
        .iter()
        .filter_map(|s| KNOWN.iter().find(|k| k.0 == s).map(|k| k.2))
        .collect();
    let mut spare = 0usize;
    stages
        .iter()
        .map(|s| {
            if let Some((_, colour, symbol)) = KNOWN.iter().find(|k| k.0 == s) {
                return StageStyle {
                    stage: s.clone(),
                    colour: colour.to_string(),
                    rgb: parse_hex(colour),
                    symbol: *symbol,
                };
            }
            let colour = SPARE[spare % SPARE.len()];
            spare += 1;
            let letters = s.chars().filter(char::is_ascii_alphanumeric);
            let candidates = letters
                .clone()
                .map(|c| c.to_ascii_uppercase())
                .chain(letters.map(|c| c.to_ascii_lowercase()))
                .chain(FALLBACK_SYMBOLS.chars())
                .chain((b'!'..=b'~').map(char::from));
            let symbol = candidates
                .filter(|c| !matches!(c, '.' | '|' | ' '))
                .find(|c| !used.contains(c))
                // More stages than printable ASCII characters: share the last one.
                .unwrap_or('?');
            used.push(symbol);
            StageStyle {
                stage: s.clone(),
                colour: colour.to_string(),
                rgb: parse_hex(colour),
                symbol,
            }
        })
        .collect()
}

/// The xterm 256-colour index closest to `rgb` in the 6×6×6 colour cube.
pub fn ansi256(rgb: [u8; 3]) -> u8 {
    let q = |v: u8| ((u16::from(v) * 5 + 127) / 255) as u8;
    16 + 36 * q(rgb[0]) + 6 * q(rgb[1]) + q(rgb[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_distinct_ascii_and_known_stages_fixed() {
        let mut stages: Vec<String> = KNOWN.iter().map(|k| k.0.to_string()).collect();
        stages.extend(["sampler", "scheduler", "s", "custom.x", "ffn2"].map(String::from));
        let st = styles(&stages);
        let mut syms: Vec<char> = st.iter().map(|s| s.symbol).collect();
        assert!(syms
            .iter()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '.' | '|')));
        assert_eq!(st[0].symbol, 'S');
        assert_eq!(st[4].colour, "#f28e2b");
        let n = syms.len();
        syms.sort_unstable();
        syms.dedup();
        assert_eq!(syms.len(), n, "distinct symbols");
        assert_eq!(ansi256([0, 0, 0]), 16);
        assert_eq!(ansi256([255, 255, 255]), 231);
    }
}
