//! The evaluation set's products: three disjoint groups drawn from Debian's `openclipart-png`,
//! one product a kind in each. `tune` tunes thresholds, `test` gives the score, and the
//! look-alikes (never in a catalog) are the same kinds of thing drawn differently: a recogniser
//! that names them has learnt "a mug", not "this mug".

use std::path::Path;

use super::super::catalog::{ProductSource, OPENCLIPART_DIR};

/// One kind of product: the `tune` product, the `test` product and the look-alike, each as
/// `(sku, name, price, path under openclipart's png/)`.
type Kind = [(&'static str, &'static str, &'static str, &'static str); 3];

/// Fifteen kinds a shop would sell. Each file was checked to exist with transparency and a
/// visible object at least 200 pixels on its long side; none is in more than one group.
const KINDS: [Kind; 15] = [
    [
        (
            "MUG-101",
            "Sunny yellow mug",
            "12.00",
            "office/cup_rollandin_francesco_.png",
        ),
        (
            "MUG-201",
            "Red cappuccino mug",
            "15.00",
            "food/beverages/cuppa_schwoo_01.png",
        ),
        (
            "MUG-901",
            "Enamel camp mug",
            "14.00",
            "food/beverages/mug.png",
        ),
    ],
    [
        (
            "GTR-101",
            "Sunburst acoustic guitar",
            "249.00",
            "recreation/music/guitar_profile_philippe__01.png",
        ),
        (
            "GTR-201",
            "Black electric guitar",
            "399.00",
            "recreation/music/electric_guitar_andrea__01r.png",
        ),
        (
            "GTR-901",
            "Parlour guitar",
            "199.00",
            "recreation/music/guitar_jarno_vasamaa1.png",
        ),
    ],
    [
        (
            "CAM-101",
            "Silver compact camera",
            "299.00",
            "electronics/macchina_fotografica_di_01.png",
        ),
        (
            "CAM-201",
            "Zoom compact camera",
            "349.00",
            "computer/hardware/digital-camera_aj_ashton_01.png",
        ),
        (
            "CAM-901",
            "Bridge camera",
            "329.00",
            "computer/icons/digital_camera_nikon_co_.png",
        ),
    ],
    [
        (
            "LAMP-101",
            "Red hurricane lantern",
            "29.00",
            "tools/hurricane_lamp_ganson.png",
        ),
        (
            "LAMP-201",
            "Red desk lamp",
            "39.50",
            "office/desk_lamp_gerald_g._01.png",
        ),
        (
            "LAMP-901",
            "Caged work lamp",
            "19.00",
            "unsorted/lampada_da_cantiere.png",
        ),
    ],
    [
        (
            "BTL-101",
            "Glass flask bottle",
            "9.00",
            "tools/bottle_jean_victor_balin_.png",
        ),
        (
            "BTL-201",
            "Yellow soda bottle",
            "2.50",
            "food/beverages/bottled_drink.png",
        ),
        (
            "BTL-901",
            "Baby bottle",
            "7.00",
            "food/beverages/baby_bottle_01.png",
        ),
    ],
    [
        (
            "PHN-101",
            "Office IP phone",
            "129.00",
            "office/telephone/ip_phone_michael_hart_r.png",
        ),
        (
            "PHN-201",
            "Red desk telephone",
            "49.00",
            "office/telephone/red_telephone_mimooh_01.png",
        ),
        (
            "PHN-901",
            "White desk phone",
            "59.00",
            "computer/phone_sergio_luiz_araujo_01.png",
        ),
    ],
    [
        (
            "MOB-101",
            "Classic mobile phone",
            "89.00",
            "office/telephone/mobile_phone_01.png",
        ),
        (
            "MOB-201",
            "Blue candybar phone",
            "79.00",
            "office/slim_cell_phone_israel_c_01.png",
        ),
        (
            "MOB-901",
            "Pearl mobile phone",
            "69.00",
            "office/telephone/cellular_phone_shandy_br_.png",
        ),
    ],
    [
        (
            "HAT-101",
            "Leather bush hat",
            "45.00",
            "people/clothing/hats/aussie_hat_01.png",
        ),
        (
            "HAT-201",
            "Knitted bobble hat",
            "22.00",
            "people/clothing/winter_hat_nathan_eady_01.png",
        ),
        (
            "HAT-901",
            "Camouflage slouch hat",
            "25.00",
            "people/clothing/hats/slouch_hat_01.png",
        ),
    ],
    [
        (
            "CLK-101",
            "Twin-bell alarm clock",
            "24.00",
            "signs_and_symbols/clocks/alarm_clock_mike_powers_.png",
        ),
        (
            "CLK-201",
            "Black wall clock",
            "35.00",
            "signs_and_symbols/clocks/modern_clock_chris_kemps_01.png",
        ),
        (
            "CLK-901",
            "Chrome wall clock",
            "32.00",
            "signs_and_symbols/clocks/orologio_da_parete_archi_01.png",
        ),
    ],
    [
        (
            "LAP-101",
            "Black laptop",
            "899.00",
            "computer/hardware/laptop.png",
        ),
        (
            "LAP-201",
            "Silver laptop",
            "799.00",
            "computer/etiquette_laptop_01.png",
        ),
        (
            "LAP-901",
            "Widescreen notebook",
            "749.00",
            "computer/notebook1_sergio_luiz_ar_02.png",
        ),
    ],
    [
        (
            "MSE-101",
            "Ghost-white mouse",
            "19.00",
            "computer/mouse_the_structorr_.png",
        ),
        (
            "MSE-201",
            "Grey scroll mouse",
            "15.00",
            "computer/hardware/mouse_scroll_fco._andrad_01.png",
        ),
        (
            "MSE-901",
            "White office mouse",
            "12.00",
            "computer/hardware/mouse.png",
        ),
    ],
    [
        (
            "BAG-101",
            "Tan leather briefcase",
            "149.00",
            "transportation/little_tan_suitcase_jona_.png",
        ),
        (
            "BAG-201",
            "White gift bag",
            "3.00",
            "containers/paperbag2_juliane_krug.png",
        ),
        (
            "BAG-901",
            "Green travel bags",
            "119.00",
            "containers/valigie_bags_architetto__01.png",
        ),
    ],
    [
        (
            "SCS-101",
            "Steel tailor's scissors",
            "18.00",
            "office/scissors_forbici_franc_.png",
        ),
        (
            "SCS-201",
            "Paper scissors",
            "6.00",
            "education/scissors.png",
        ),
        (
            "SCS-901",
            "Black craft scissors",
            "8.00",
            "education/scissors_02.png",
        ),
    ],
    [
        (
            "BOOK-101",
            "Navy hardback notebook",
            "14.00",
            "education/books/book_01.png",
        ),
        (
            "BOOK-201",
            "Teal paperback",
            "11.00",
            "education/books/closed_book_01.png",
        ),
        (
            "BOOK-901",
            "Leather-bound journal",
            "29.00",
            "education/books/stara_ksiega_-_old_book_01.png",
        ),
    ],
    [
        (
            "TRP-101",
            "B-flat trumpet",
            "399.00",
            "recreation/music/trumpet_b_flat_colour_ganso.png",
        ),
        (
            "TRP-201",
            "Pocket trumpet",
            "299.00",
            "recreation/music/trumpet_pocket_colour_ganso.png",
        ),
        (
            "TRP-901",
            "Herald trumpet",
            "499.00",
            "recreation/music/trumpet_herald__ganson.png",
        ),
    ],
];

/// A group of the evaluation set's products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The catalog used to tune thresholds.
    Tune,
    /// The catalog used for the score.
    Test,
    /// Never in a catalog; shown in both splits' clips.
    LookAlike,
}

impl Group {
    fn index(self) -> usize {
        match self {
            Group::Tune => 0,
            Group::Test => 1,
            Group::LookAlike => 2,
        }
    }
}

/// The products of a group, in a fixed order.
pub fn group_products(group: Group) -> Vec<ProductSource> {
    KINDS
        .iter()
        .map(|kind| {
            let (sku, name, price, rel) = kind[group.index()];
            ProductSource {
                sku: sku.into(),
                name: name.into(),
                price: price.into(),
                image: Path::new(OPENCLIPART_DIR).join(rel),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_disjoint_and_the_same_size() {
        let mut skus = std::collections::HashSet::new();
        let mut images = std::collections::HashSet::new();
        for g in [Group::Tune, Group::Test, Group::LookAlike] {
            let products = group_products(g);
            assert_eq!(products.len(), KINDS.len());
            for p in products {
                assert!(skus.insert(p.sku.clone()), "{} twice", p.sku);
                assert!(
                    images.insert(p.image.clone()),
                    "{} twice",
                    p.image.display()
                );
            }
        }
    }
}
