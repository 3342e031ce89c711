//! A world of fictitious people for the reverse-curse demonstration: each person has a made-up name
//! and a unique description, and the training text states every fact name first, in several
//! sentence templates, as in Berglund et al.'s "A is B" experiment. Questions ask in the trained
//! direction (name → description) and in the reversed one (description → name).
//!
//! [`FactWorld::training_sentences_both_ways`] also states the facts of the first `k` people
//! description first: the model then sees the reversed question's word order, for them, and the
//! test is whether it answers it for the others, whose facts it saw one way only.
//!
//! ```
//! use mdm_data::facts::FactWorld;
//!
//! let world = FactWorld::generate(20, 7);
//! assert_eq!(world.people.len(), 20);
//! let text = world.training_sentences();
//! assert!(text.iter().all(|s| world.people.iter().any(|p| s.contains(&p.name))));
//! let (prompt, answer) = &world.reverse_questions()[0];
//! assert!(prompt.starts_with("The ") && answer.starts_with(' '));
//! ```

/// One fictitious person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// First and last name, e.g. `Tolan Verrimar`.
    pub name: String,
    /// A description no one else has, e.g. `the silent baker of Ostmere`.
    pub description: String,
}

/// The people of one seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactWorld {
    /// Everyone, in generation order.
    pub people: Vec<Person>,
}

const ONSETS: [&str; 16] = [
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "br",
];
const VOWELS: [&str; 6] = ["a", "e", "i", "o", "u", "ae"];
const CODAS: [&str; 8] = ["", "n", "r", "l", "s", "m", "th", "x"];
const ADJECTIVES: [&str; 12] = [
    "silent",
    "famous",
    "youngest",
    "oldest",
    "bold",
    "gentle",
    "clever",
    "wandering",
    "royal",
    "humble",
    "secret",
    "tireless",
];
const ROLES: [&str; 12] = [
    "baker", "painter", "keeper", "mayor", "singer", "poet", "builder", "healer", "weaver",
    "sailor", "judge", "teacher",
];

/// The sentence templates of the training text: the name always comes first.
pub const TEMPLATES: [&str; 4] = [
    "{name} is {description}.",
    "{name}, known to all as {description}, lives by the sea.",
    "Ask anyone: {name} is {description}.",
    "Long ago {name} became {description}.",
];

/// The description-first templates of the people stated both ways; the first is the reversed
/// question's own order (`"The DESCRIPTION is"` → `" NAME"`).
pub const REVERSE_TEMPLATES: [&str; 4] = [
    "{Description} is {name}.",
    "Known to all as {description}, {name} lives by the sea.",
    "Ask anyone: {description} is {name}.",
    "Long ago {description} became {name}.",
];

/// `text` with its first letter in upper case.
fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// SplitMix64: a tiny seeded generator (the world must not depend on a `rand` version).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    fn word(&mut self, syllables: usize) -> String {
        let mut w = String::new();
        for _ in 0..syllables {
            w.push_str(self.pick(&ONSETS));
            w.push_str(self.pick(&VOWELS));
        }
        w.push_str(self.pick(&CODAS));
        capitalised(&w)
    }
}

impl FactWorld {
    /// `n` people from `seed`: names of two made-up words, descriptions "the ADJ ROLE of PLACE";
    /// names, descriptions and first names are unique.
    pub fn generate(n: usize, seed: u64) -> Self {
        let mut rng = SplitMix(seed);
        let mut people: Vec<Person> = Vec::with_capacity(n);
        let mut first_names = std::collections::HashSet::new();
        let mut descriptions = std::collections::HashSet::new();
        while people.len() < n {
            let first = rng.word(2);
            let name = format!("{first} {}", rng.word(2));
            let place = rng.word(2);
            let description = format!(
                "the {} {} of {place}",
                rng.pick(&ADJECTIVES),
                rng.pick(&ROLES)
            );
            if first_names.contains(&first) || descriptions.contains(&description) {
                continue;
            }
            first_names.insert(first);
            descriptions.insert(description.clone());
            people.push(Person { name, description });
        }
        Self { people }
    }

    /// Every fact in every template, name first: one sentence per document.
    pub fn training_sentences(&self) -> Vec<String> {
        self.training_sentences_both_ways(0)
    }

    /// Every fact name first in every template, and the facts of the first `both_ways` people
    /// (all of them if there are fewer) also description first, in every [`REVERSE_TEMPLATES`]
    /// template: one sentence per document.
    pub fn training_sentences_both_ways(&self, both_ways: usize) -> Vec<String> {
        let fill = |t: &str, p: &Person| {
            t.replace("{name}", &p.name)
                .replace("{description}", &p.description)
                .replace("{Description}", &capitalised(&p.description))
        };
        let forward = TEMPLATES
            .iter()
            .flat_map(|t| self.people.iter().map(move |p| fill(t, p)));
        let both = &self.people[..both_ways.min(self.people.len())];
        let reverse = REVERSE_TEMPLATES
            .iter()
            .flat_map(|t| both.iter().map(move |p| fill(t, p)));
        forward.chain(reverse).collect()
    }

    /// The people before index `at` (e.g. those stated both ways) and those from it on (stated one
    /// way only), as two worlds; `at` past the end puts everyone in the first.
    pub fn split_at(&self, at: usize) -> (FactWorld, FactWorld) {
        let (first, rest) = self.people.split_at(at.min(self.people.len()));
        (
            FactWorld {
                people: first.to_vec(),
            },
            FactWorld {
                people: rest.to_vec(),
            },
        )
    }

    /// Questions in the trained direction: prompt `"NAME is"`, answer `" DESCRIPTION"`.
    pub fn forward_questions(&self) -> Vec<(String, String)> {
        self.people
            .iter()
            .map(|p| (format!("{} is", p.name), format!(" {}", p.description)))
            .collect()
    }

    /// The reversed question asked the way an MDM can answer it: the training sentence
    /// `"NAME is DESCRIPTION."` with the name to be filled in (text, answer). A left-to-right model
    /// cannot be asked this: the name comes before what identifies it.
    pub fn infill_questions(&self) -> Vec<(String, String)> {
        self.people
            .iter()
            .map(|p| (format!("{} is {}.", p.name, p.description), p.name.clone()))
            .collect()
    }

    /// Questions in the reversed direction, never seen in training: prompt
    /// `"The ADJ ROLE of PLACE is"` (the description, capitalised), answer `" NAME"`.
    pub fn reverse_questions(&self) -> Vec<(String, String)> {
        self.people
            .iter()
            .map(|p| {
                (
                    format!("{} is", capitalised(&p.description)),
                    format!(" {}", p.name),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worlds_are_seeded_unique_and_one_directional() {
        let a = FactWorld::generate(50, 1);
        assert_eq!(a, FactWorld::generate(50, 1));
        assert_ne!(a, FactWorld::generate(50, 2));
        let names: std::collections::HashSet<_> = a.people.iter().map(|p| &p.name).collect();
        let descs: std::collections::HashSet<_> = a.people.iter().map(|p| &p.description).collect();
        assert_eq!((names.len(), descs.len()), (50, 50));
        let text = a.training_sentences();
        assert_eq!(text.len(), 50 * TEMPLATES.len());
        // every sentence states a fact name first; no sentence puts a description before its name
        for p in &a.people {
            for s in text.iter().filter(|s| s.contains(&p.description)) {
                assert!(
                    s.find(&p.name).unwrap() < s.find(&p.description).unwrap(),
                    "{s}"
                );
            }
        }
        // the reversed prompts never occur in the training text
        for (prompt, answer) in a.reverse_questions() {
            let lower = prompt.to_lowercase();
            assert!(
                text.iter().all(|s| !s.to_lowercase().contains(&lower)),
                "{prompt}"
            );
            assert!(names.contains(&answer.trim().to_string()));
        }
        for (prompt, answer) in a.forward_questions() {
            assert!(text
                .iter()
                .any(|s| s.contains(&format!("{prompt}{answer}"))));
        }
    }

    #[test]
    fn both_ways_people_are_also_stated_description_first() {
        let w = FactWorld::generate(10, 3);
        let text = w.training_sentences_both_ways(4);
        assert_eq!(
            text.len(),
            10 * TEMPLATES.len() + 4 * REVERSE_TEMPLATES.len()
        );
        let (both, one_way) = w.split_at(4);
        assert_eq!(
            (&both.people[..], &one_way.people[..]),
            w.people.split_at(4)
        );
        // the reversed question, answer included, is a training sentence for the first four...
        for (prompt, answer) in both.reverse_questions() {
            assert!(text.contains(&format!("{prompt}{answer}.")), "{prompt}");
        }
        // ...and never seen for the others, whose descriptions never precede their names
        for (prompt, _) in one_way.reverse_questions() {
            let lower = prompt.to_lowercase();
            assert!(text.iter().all(|s| !s.to_lowercase().contains(&lower)));
        }
        for p in &one_way.people {
            for s in text.iter().filter(|s| s.contains(&p.description)) {
                assert!(s.find(&p.name) < s.find(&p.description), "{s}");
            }
        }
        // more both-ways people than the world holds: everyone
        assert_eq!(w.training_sentences_both_ways(99).len(), 10 * 8);
        let (everyone, nobody) = w.split_at(99);
        assert!(everyone == w && nobody.people.is_empty());
    }
}
