"""Word lists behind the generated inventory data (realistic values, no external downloads)."""

from __future__ import annotations

FIRST_NAMES = ["James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen", "Christopher", "Lisa", "Daniel", "Nancy", "Matthew", "Betty", "Anthony", "Margaret", "Mark", "Sandra", "Donald", "Ashley", "Steven", "Kimberly", "Paul", "Emily", "Andrew", "Donna", "Joshua", "Michelle", "Kenneth", "Carol", "Kevin", "Amanda", "Brian", "Dorothy", "George", "Melissa", "Timothy", "Deborah", "Ronald", "Stephanie", "Edward", "Rebecca", "Jason", "Sharon", "Jeffrey", "Laura", "Ryan", "Cynthia", "Jacob", "Kathleen", "Gary", "Amy", "Nicholas", "Angela", "Eric", "Shirley", "Jonathan", "Anna", "Stephen", "Brenda", "Larry", "Pamela", "Justin", "Emma", "Scott", "Nicole", "Brandon", "Helen", "Benjamin", "Samantha", "Samuel", "Katherine", "Gregory", "Christine", "Alexander", "Debra", "Frank", "Rachel", "Patrick", "Carolyn", "Raymond", "Janet", "Jack", "Catherine", "Dennis", "Maria", "Jerry", "Heather", "Tyler", "Diane", "Aaron", "Ruth", "Jose", "Julie", "Adam", "Olivia", "Nathan", "Joyce", "Henry", "Virginia", "Douglas", "Victoria", "Zachary", "Kelly", "Peter", "Lauren", "Kyle", "Christina", "Ethan", "Joan", "Walter", "Evelyn", "Noah", "Judith", "Jeremy", "Megan", "Christian", "Andrea", "Keith", "Cheryl", "Roger", "Hannah", "Terry", "Jacqueline", "Gerald", "Martha", "Harold", "Gloria", "Sean", "Teresa", "Austin", "Ann", "Carl", "Sara", "Arthur", "Madison", "Lawrence", "Frances", "Dylan", "Kathryn", "Jesse", "Janice", "Jordan", "Jean", "Bryan", "Abigail", "Billy", "Alice", "Joe", "Judy", "Bruce", "Sophia", "Gabriel", "Grace", "Logan", "Denise", "Albert", "Amber", "Willie", "Doris", "Alan", "Marilyn", "Juan", "Danielle", "Wayne", "Beverly", "Elijah", "Isabella", "Randy", "Theresa", "Roy", "Diana", "Vincent", "Natalie", "Ralph", "Brittany", "Eugene", "Charlotte", "Russell", "Marie", "Bobby", "Kayla", "Mason", "Alexis", "Philip", "Lori", "Priya", "Wei", "Mohammed", "Fatima", "Hiroshi", "Yuki", "Carlos", "Lucia", "Ahmed", "Aisha", "Dmitri", "Olga", "Sven", "Ingrid"]

LAST_NAMES = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Gomez", "Phillips", "Evans", "Turner", "Diaz", "Parker", "Cruz", "Edwards", "Collins", "Reyes", "Stewart", "Morris", "Morales", "Murphy", "Cook", "Rogers", "Gutierrez", "Ortiz", "Morgan", "Cooper", "Peterson", "Bailey", "Reed", "Kelly", "Howard", "Ramos", "Kim", "Cox", "Ward", "Richardson", "Watson", "Brooks", "Chavez", "Wood", "James", "Bennett", "Gray", "Mendoza", "Ruiz", "Hughes", "Price", "Alvarez", "Castillo", "Sanders", "Patel", "Myers", "Long", "Ross", "Foster", "Jimenez", "Powell", "Jenkins", "Perry", "Russell", "Sullivan", "Bell", "Coleman", "Butler", "Henderson", "Barnes", "Gonzales", "Fisher", "Vasquez", "Simmons", "Romero", "Jordan", "Patterson", "Alexander", "Hamilton", "Graham", "Reynolds", "Griffin", "Wallace", "Moreno", "West", "Cole", "Hayes", "Bryant", "Herrera", "Gibson", "Ellis", "Tran", "Medina", "Aguilar", "Stevens", "Murray", "Ford", "Castro", "Marshall", "Owens", "Harrison", "Fernandez", "McDonald", "Woods", "Washington", "Kennedy", "Wells", "Vargas", "Henry", "Chen", "Freeman", "Webb", "Tucker", "Guzman", "Burns", "Crawford", "Olson", "Simpson", "Porter", "Hunter", "Gordon", "Mendez", "Silva", "Shaw", "Snyder", "Mason", "Dixon", "Munoz", "Hunt", "Hicks", "Holmes", "Palmer", "Wagner", "Black", "Robertson", "Boyd", "Rose", "Stone", "Salazar", "Fox", "Warren", "Mills", "Meyer", "Rice", "Schmidt", "Garza", "Daniels", "Ferguson", "Nichols", "Stephens", "Soto", "Weaver", "Ryan", "Gardner", "Payne", "Grant"]

EMAIL_DOMAINS = (
    "gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "proton.me",
    "aol.com", "mail.com", "fastmail.com", "example.org",
)

# category -> (SKU prefix, typical price in dollars, nouns)
CATEGORIES: dict[str, tuple[str, float, tuple[str, ...]]] = {
    "Electronics": ("ELC", 120.0, ("Headphones", "Charger", "Speaker", "Monitor", "Router", "Webcam")),
    "Tools": ("TLS", 45.0, ("Drill", "Wrench Set", "Hammer", "Saw", "Screwdriver Kit", "Level")),
    "Office Supplies": ("OFF", 12.0, ("Stapler", "Notebook", "Pen Pack", "Binder", "Desk Lamp")),
    "Furniture": ("FUR", 240.0, ("Desk", "Office Chair", "Bookshelf", "Filing Cabinet", "Table")),
    "Kitchen": ("KIT", 35.0, ("Blender", "Knife Set", "Kettle", "Cutting Board", "Cookware Set")),
    "Sports": ("SPT", 55.0, ("Yoga Mat", "Dumbbell Set", "Tennis Racket", "Bike Helmet", "Ball")),
    "Toys": ("TOY", 25.0, ("Puzzle", "Building Blocks", "Board Game", "Action Figure", "Kite")),
    "Apparel": ("APP", 40.0, ("Jacket", "T-Shirt", "Rain Coat", "Work Gloves", "Safety Vest")),
    "Automotive": ("AUT", 60.0, ("Jump Starter", "Floor Mats", "Car Charger", "Tire Gauge")),
    "Garden": ("GRD", 30.0, ("Hose", "Pruning Shears", "Planter", "Rake", "Sprinkler")),
    "Health": ("HLT", 18.0, ("First Aid Kit", "Thermometer", "Hand Sanitizer", "Face Masks")),
    "Pet Supplies": ("PET", 22.0, ("Dog Bed", "Cat Tree", "Leash", "Pet Bowl", "Litter Box")),
}

PRODUCT_ADJECTIVES = (
    "Pro", "Ultra", "Compact", "Heavy-Duty", "Classic", "Smart", "Eco", "Premium", "Portable",
    "Deluxe", "Essential", "Advanced", "Wireless", "Rugged", "Lightweight",
)

COMPANY_SUFFIXES = (
    "Industrial Supply", "Logistics", "Trading Co.", "Manufacturing", "Wholesale",
    "Distribution", "Imports", "Partners", "Group", "Components",
)

# (city, region) pairs for warehouse locations
CITIES = (
    ("Chicago", "IL"), ("Dallas", "TX"), ("Atlanta", "GA"), ("Phoenix", "AZ"), ("Denver", "CO"),
    ("Seattle", "WA"), ("Memphis", "TN"), ("Columbus", "OH"), ("Reno", "NV"), ("Newark", "NJ"),
    ("Louisville", "KY"), ("Indianapolis", "IN"), ("Kansas City", "MO"), ("Salt Lake City", "UT"),
    ("Charlotte", "NC"), ("Jacksonville", "FL"), ("Sacramento", "CA"), ("Ontario", "CA"),
    ("Allentown", "PA"), ("Harrisburg", "PA"), ("Nashville", "TN"), ("Houston", "TX"),
    ("Portland", "OR"), ("Minneapolis", "MN"), ("Detroit", "MI"), ("Toronto", "ON"),
    ("Rotterdam", "NL"), ("Hamburg", "DE"), ("Lyon", "FR"), ("Milan", "IT"), ("Madrid", "ES"),
    ("Birmingham", "UK"), ("Warsaw", "PL"), ("Prague", "CZ"), ("Venlo", "NL"), ("Dublin", "IE"),
)

CARRIERS = ("UPS", "FedEx", "DHL", "USPS", "OnTrac", "Amazon Logistics", "XPO", "Purolator")
CARRIER_WEIGHTS = (0.28, 0.24, 0.14, 0.16, 0.04, 0.08, 0.03, 0.03)

RETURN_REASONS = (
    "Damaged in transit", "Defective item", "Wrong item shipped", "No longer needed",
    "Better price found", "Arrived too late", "Not as described", "Missing parts",
    "Ordered by mistake", "Size or fit issue",
)

# Realistic malformed values for the defect injector, keyed by what the format rule validates.
MALFORMED_EMAILS = (
    "john.smith@example", "maria garcia@gmail.com", "info.example.com", "sales@@supplier.com",
    "contact@", "n/a", "jane.doe@mail .com", "@outlook.com",
)
MALFORMED_PHONES = ("N/A", "555-12", "call office", "tbd", "ext. 204", "+1-800-FLOWERS", "0")
MALFORMED_SKUS = ("sku-1234", "ELC1234", "AB-12", "ELC_004521", "elc-004521", "TBD", "ELC-12A")
UNKNOWN_STATUSES = ("UNKNOWN", "ON_HOLD", "shipped", "N/A", "LOST", "BACKORDERED")
